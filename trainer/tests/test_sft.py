"""Cold-start SFT (`sftTrain`, cm2_trainer/sft.py) on the tiny random Llama: rendering, loss, checkpoints,
kill and resume, idempotent retries, and the strict request decoder."""

import copy
import io
import json
import re

import pytest
import torch
from helpers import TOOLS, batch_obj, transcript
from safetensors.torch import load as load_safetensors

import cm2_trainer.sft as sft_mod
from cm2_trainer.chat import serving_chat_template
from cm2_trainer.config import SftConfig, TrainerConfig
from cm2_trainer.contract import ContractError, decode_batch, decode_record, decode_sft_request, decode_sft_result
from cm2_trainer.render import render_sample
from cm2_trainer.store import FsStore, Ref
from cm2_trainer.update import ModelCache

CITIES = ["Paris", "Oslo", "Lima", "Rome"]


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def record(city: str, uuid: str | None = None) -> dict:
    """A stored TrajectoryRecord (core/records.ts): `content` always a string, `tool_calls: []` on every message."""
    messages = []
    for m in transcript(city, f"It is sunny in {city}."):
        m = {**m, "content": m["content"] or "", "tool_calls": m.get("tool_calls", [])}
        messages.append(m)
    return {"uuid": uuid or f"rec-{city}", "tools": TOOLS, "messages": messages, "checklists": [], "meta": {"k": 1}}


def put_dataset(store: FsStore, name: str, records: list[dict]) -> Ref:
    refs = [store.put_json(r) for r in records]
    return store.put_json(
        {
            "schema": "cm2.dataset/v1",
            "name": name,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "count": len(refs),
            "records": [r.to_json() for r in refs],
            "uuids": [r["uuid"] for r in records],
            "sources": [{"file": "x.jsonl", "format": "cm2", "imported": len(refs), "errors": 0}],
        }
    )


def request_obj(store, base_dir, dataset: Ref, held_out: Ref | None = None, run_id: str = "s1", **sft) -> dict:
    params = {"lr": 1e-2, "epochs": 1, "batchSize": 2, "checkpointEvery": 2, "loraRank": 4, "loraAlpha": 8}
    params.update(sft)
    return {
        "runId": run_id,
        "dataset": dataset.to_json(),
        "heldOut": held_out.to_json() if held_out is not None else None,
        "base": {"kind": "hf", "path": str(base_dir)},
        "storeUrl": store.url,
        "sft": params,
    }


def sft_req(store, base_dir, dataset, held_out=None, run_id="s1", **sft):
    return decode_sft_request(request_obj(store, base_dir, dataset, held_out, run_id, **sft))


def manifest(store, ref):
    return store.get_json(ref)


def weights(store, ref) -> dict:
    """The trained tensors of a checkpoint: the LoRA adapter, or every model weight of a full fine-tune."""
    files = manifest(store, ref)["files"]
    name = "adapter_model.safetensors" if "adapter_model.safetensors" in files else "model.safetensors"
    return load_safetensors(store.get_bytes(Ref.from_json(files[name])))


def beats_into(out: list):
    return lambda p: out.append(dict(p))


# -- (c) + (d): rendering ----------------------------------------------------------------------------------------
def _rendered(store, tok, rec):
    ds = put_dataset(store, "one", [rec])
    cfg = SftConfig()
    samples, skipped, name = sft_mod.render_dataset(
        store, ds, "request.dataset", tok, serving_chat_template(tok), len(tok), cfg
    )
    assert name == "one" and skipped == {"tooLong": 0, "noLossToken": 0} and len(samples) == 1
    return samples[0]


def test_sft_renders_a_record_exactly_as_rl_renders_the_transcript_with_every_assistant_message_trained(tmp_path, tok):
    store = FsStore(tmp_path)
    sft_sample = _rendered(store, tok, record("Paris"))
    batch = batch_obj(advantages=(1.0, 1.0))  # messages 2 and 4: both assistant messages, advantage 1
    stored = store.get_json(store.put_json(batch))  # through the store, as update_policy reads it
    rl = render_sample(decode_batch(stored).samples[0], tok, chat_template=serving_chat_template(tok))
    assert sft_sample.input_ids == rl.input_ids
    assert sft_sample.loss_mask == rl.loss_mask
    assert sft_sample.advantages == rl.advantages
    assert set(sft_sample.advantages) == {0.0, 1.0}


def test_records_without_call_ids_render_as_with_them(tmp_path, tok):
    """core/records.ts allows an empty call id and a tool response without tool_call_id (it answers the call in
    its position): such a record trains, rendered as the record with the ids filled in."""
    bare = record("Lima")
    bare["messages"][2]["tool_calls"][0]["id"] = ""
    del bare["messages"][3]["tool_call_id"]
    full = record("Lima")
    full["messages"][2]["tool_calls"][0]["id"] = "call_0"
    full["messages"][3]["tool_call_id"] = "call_0"
    a = _rendered(FsStore(tmp_path / "a"), tok, bare)
    b = _rendered(FsStore(tmp_path / "b"), tok, full)
    assert (a.input_ids, a.loss_mask) == (b.input_ids, b.loss_mask)
    sample = decode_record(bare, "record")
    assert sample.messages[2]["tool_calls"][0]["id"] == sample.messages[3]["tool_call_id"] == "call_0"
    assert "tool_calls" not in sample.messages[1] and sample.advantages == {2: 1.0, 4: 1.0}


@pytest.mark.parametrize("which", ["hermetic", "smollm2"])
def test_only_assistant_tokens_carry_loss(tmp_path, request, which):
    """With the hermetic test tokenizer and with the real SmolLM2 tokenizer of the embedded model."""
    tok = request.getfixturevalue("tok" if which == "hermetic" else "gguf_tok")
    s = _rendered(FsStore(tmp_path), tok, record("Oslo"))
    spans, start = [], None
    for t, m in enumerate(s.loss_mask + [0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            spans.append((start, t))
            start = None
    text = [tok.decode(s.input_ids[a:b], skip_special_tokens=False) for a, b in spans]
    before = [tok.decode(s.input_ids[:a], skip_special_tokens=False) for a, _ in spans]
    # two assistant messages, each trained from its first token through its end-of-turn token, nothing else
    assert len(text) == 2, text
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'  # SmolLM2's template puts newlines around it
    assert text[0].startswith("<tool_call>") and call in text[0] and text[0].endswith("</tool_call><|im_end|>")
    assert text[1] == "It is sunny in Oslo.<|im_end|>"
    assert all(b.endswith("<|im_start|>assistant\n") for b in before)
    context = tok.decode([t for t, m in zip(s.input_ids, s.loss_mask, strict=True) if not m])
    for part in ("You are a weather assistant.", "Weather in Oslo?", '"temp_c": 21', "get_weather"):
        assert part in context


# -- (a): the loss falls -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("tokenizer", ["hermetic", "smollm2"])
def test_loss_falls_on_a_repeated_batch(tmp_path, request, cache, finetune, tokenizer):
    """A tiny random model, with the hermetic test tokenizer and with the real SmolLM2 tokenizer."""
    base_dir = request.getfixturevalue("base_dir" if tokenizer == "hermetic" else "real_tok_base_dir")
    store = FsStore(tmp_path)
    ds = put_dataset(store, "train", [record("Paris")])
    beats: list = []
    req = sft_req(
        store,
        base_dir,
        ds,
        epochs=20,
        batchSize=1,
        checkpointEvery=20,
        warmupRatio=0.0,
        schedule="constant",
        finetune=finetune,
    )
    res = sft_mod.sft_train(req, cache=cache, heartbeat=beats_into(beats))
    decode_sft_result(res.to_json())
    losses = [b["loss"] for b in beats if b["phase"] == "train"]
    assert [b["step"] for b in beats if b["phase"] == "train"] == list(range(1, 21))
    assert res.steps == 20 and res.reused is False and len(res.history) == 1
    # from ln(vocab) ~ 5.6; a LoRA on the random model cannot move its frozen head far (its floor is ~4.3 here)
    assert losses[-1] < (losses[0] - 0.25 if finetune == "lora" else 0.7 * losses[0]), losses
    assert res.history[0]["loss"] == pytest.approx(sum(losses) / 20)
    assert res.history[0]["heldOutLoss"] is None
    if finetune == "lora":  # the cached base is the plain model again
        assert not any("lora" in n for n, _ in cache._value[0].named_parameters())


# -- (b): kill and resume ------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_a_killed_and_resumed_run_reaches_the_weights_of_an_uninterrupted_run(tmp_path, base_dir, finetune):
    # float64: any difference in how the two runs compute would show; identical computations give equal bits
    rt = TrainerConfig(dtype="float64")
    runs = {}
    for kind in ("straight", "killed"):
        store = FsStore(tmp_path / kind)
        ds = put_dataset(store, "train", [record(c) for c in CITIES[:3]])
        held = put_dataset(store, "held", [record("Rome")])
        # 3 samples x 3 epochs / batch 2 = 5 steps, capped at 4; checkpoints at 2 and 4
        req = sft_req(store, base_dir, ds, held, epochs=3, maxSteps=4, finetune=finetune, lr=1e-3)

        def kill_at_3(p):
            if p["phase"] == "train" and p["step"] == 3:
                raise Killed("worker died during step 3")

        if kind == "killed":
            with pytest.raises(Killed):
                sft_mod.sft_train(req, heartbeat=kill_at_3, cache=ModelCache(), defaults=rt)
            assert store.get_name("sft/s1/step-2") is not None and store.get_name("sft/s1/final") is None
        beats: list = []
        res = sft_mod.sft_train(req, heartbeat=beats_into(beats), cache=ModelCache(), defaults=rt)
        steps = [b["step"] for b in beats if b["phase"] == "train"]
        assert steps == ([1, 2, 3, 4] if kind == "straight" else [3, 4])  # resumed after step 2
        assert res.steps == 4 and [h["step"] for h in res.history] == [2, 4]
        runs[kind] = (store, res)

    (sa, ra), (sb, rb) = runs["straight"], runs["killed"]
    wa, wb = weights(sa, ra.checkpoint), weights(sb, rb.checkpoint)
    assert wa.keys() == wb.keys() and all(v.dtype == torch.float64 for v in wa.values())
    start = weights(sa, sa.get_name("sft/s1/step-2"))
    assert any(not torch.equal(wa[k], start[k]) for k in wa)  # steps 3 and 4 moved the weights
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-12, atol=0)
    assert ra.history == rb.history  # the same losses and held-out losses, checkpoint by checkpoint
    m = manifest(sa, ra.checkpoint)
    state = torch.load(io.BytesIO(sa.get_bytes(Ref.from_json(m["files"]["trainer_state.pt"]))), weights_only=True)
    assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4
    if finetune == "lora":
        assert set(m["files"]) == {
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.pt",
            "trainer_state.pt",
        }
    else:  # a complete HF model directory: weights, config and tokenizer
        assert {"model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "trainer_state.pt"} <= set(
            m["files"]
        )


# -- (e): idempotent retry -----------------------------------------------------------------------------------------
def test_a_finished_run_is_returned_without_training(tmp_path, base_dir, cache, monkeypatch):
    store = FsStore(tmp_path)
    ds = put_dataset(store, "train", [record(c) for c in CITIES])
    req = sft_req(store, base_dir, ds, checkpointEvery=1)
    first = sft_mod.sft_train(req, cache=cache)
    assert first.reused is False and store.get_name("sft/s1/final") == first.checkpoint
    m = manifest(store, first.checkpoint)
    assert m["schema"] == "cm2.sft-checkpoint/v1" and (m["step"], m["steps"]) == (2, 2)
    assert m["sft"] == req.config().to_json() and m["finetune"] == "lora" and m["heldOut"] is None
    assert json.loads(store.get_bytes(Ref.from_json(m["files"]["adapter_config.json"])))["r"] == 4

    monkeypatch.setattr(sft_mod, "_step", lambda *a, **k: pytest.fail("trained twice"))
    second = sft_mod.sft_train(req, cache=cache)
    assert second.reused is True
    assert second.to_json() == {**first.to_json(), "reused": True}
    # another config under the same run id is refused, not answered with this run's result
    with pytest.raises(ContractError, match=r"SFT run 's1' already has checkpoint sft/s1/final with sft .* use a new"):
        sft_mod.sft_train(sft_req(store, base_dir, ds, checkpointEvery=1, lr=5e-3), cache=cache)


# -- (f): held-out loss --------------------------------------------------------------------------------------------
def test_the_held_out_loss_is_reported_per_checkpoint(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    ds = put_dataset(store, "train", [record(c) for c in CITIES[:2]])
    held = put_dataset(store, "held", [record("Rome"), record("Lima", uuid="held-lima")])
    beats: list = []
    res = sft_mod.sft_train(
        sft_req(store, base_dir, ds, held, batchSize=1, checkpointEvery=1), cache=cache, heartbeat=beats_into(beats)
    )
    assert [h["step"] for h in res.history] == [1, 2]
    held_losses = [h["heldOutLoss"] for h in res.history]
    assert all(isinstance(x, float) and 0 < x < 20 for x in held_losses)
    assert held_losses[0] != held_losses[1]  # measured on the weights of each checkpoint
    for h in res.history:
        m = manifest(store, store.get_name(f"sft/s1/step-{h['step']}"))
        assert m["metrics"] == {"loss": h["loss"], "heldOutLoss": h["heldOutLoss"]} and m["heldOut"] == held.to_json()
    phases = [b["phase"] for b in beats if b["phase"] != "load"]
    assert phases == ["train", "heldout", "save"] * 2


def test_skipped_records_are_counted_and_a_dataset_without_usable_samples_is_refused(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    no_assistant = record("Lima", uuid="question-only")
    no_assistant["messages"] = no_assistant["messages"][:2]
    long_one = record("Paris", uuid="long")
    long_one["messages"][-1]["content"] = "x" * 1500
    ds = put_dataset(store, "mixed", [record("Oslo"), no_assistant, long_one])
    res = sft_mod.sft_train(sft_req(store, base_dir, ds, maxTokens=1200), cache=cache)
    assert res.skipped == {"tooLong": 1, "noLossToken": 1} and res.steps == 1

    with pytest.raises(ContractError, match=r"Dataset 'mixed' \(cm2://sha256/.*\) has no usable sample: of its 3 "):
        sft_mod.sft_train(sft_req(store, base_dir, ds, run_id="s2", maxTokens=100), cache=cache)


def test_an_sft_adapter_is_served_like_an_rl_checkpoint(tmp_path, base_dir, cache):
    from cm2_trainer.models import materialize_checkpoint

    store = FsStore(tmp_path)
    res = sft_mod.sft_train(sft_req(store, base_dir, put_dataset(store, "train", [record("Oslo")])), cache=cache)
    dest = tmp_path / "served"
    dest.mkdir()
    materialize_checkpoint(store, res.checkpoint.to_json(), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# -- (g): the request decoder --------------------------------------------------------------------------------------
def _base_request():
    ref = Ref("a" * 64, 10)
    return {
        "runId": "s1",
        "dataset": ref.to_json(),
        "heldOut": None,
        "base": {"kind": "hf", "path": "/models/x"},
        "storeUrl": "file:///srv/cm2/store",
        "sft": {},
    }


def test_an_empty_sft_object_takes_the_defaults():
    req = decode_sft_request(_base_request())
    assert req.config() == SftConfig() and req.held_out is None


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("sft", "learningRate"), 1e-4, "request.sft has unknown fields ['learningRate']"),
        (("extra",), 1, "request has unknown fields ['extra']"),
        (("sft", "warmupRatio"), 1.0, "request.sft.warmupRatio is 1.0, expected a number in [0, 1)"),
        (("sft", "epochs"), 0, "request.sft.epochs is 0, expected an integer >= 1"),
        (("sft", "batchSize"), 1.5, "request.sft.batchSize is 1.5, expected an integer"),
        (("sft", "finetune"), "qlora", "request.sft.finetune is 'qlora', expected 'lora' or 'full'"),
        (("sft", "schedule"), "linear", "request.sft.schedule is 'linear', expected 'cosine' or 'constant'"),
        (("sft", "lr"), 0, "request.sft.lr is 0.0, expected a number > 0"),
        (("sft", "maxTokens"), "12000", "request.sft.maxTokens is '12000', expected an integer"),
        (("runId",), "a/b", "request.runId is 'a/b', expected one name segment"),
        (("heldOut",), {"uri": "x"}, "request.heldOut.sha256 is None"),
        (("base", "kind"), "onnx", "request.base.kind is 'onnx'"),
    ],
)
def test_bad_sft_requests_name_the_field_and_value(path, value, message):
    obj = copy.deepcopy(_base_request())
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    with pytest.raises(ContractError, match=re.escape(message)):
        decode_sft_request(obj)
