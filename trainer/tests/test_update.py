import io
import json
import math
from dataclasses import replace

import pytest
import torch
from helpers import assert_same_update, batch_obj, request_obj
from safetensors.torch import load as load_safetensors

from cm2_trainer.contract import ContractError, decode_manifest, decode_result, decode_update_request
from cm2_trainer.store import FsStore
from cm2_trainer.update import ModelCache, checkpoint_name, update_policy


@pytest.fixture(scope="module")
def cache():
    return ModelCache()  # one base load for the module, as in a long-lived worker


def _req(store, base_dir, *, iteration=0, parent=None, advantages=(0.5, -0.5), run_id="r1", **trainer):
    ref = store.put_json(batch_obj(run_id=run_id, iteration=iteration, advantages=advantages))
    return decode_update_request(
        request_obj(store.url, ref, base_dir, run_id=run_id, iteration=iteration, parent=parent, **trainer)
    )


def _manifest(store, ref):
    return store.get_json(ref)


def _adapter(store, ref):
    m = _manifest(store, ref)
    return load_safetensors(store.get_bytes(_ref(m["files"]["adapter_model.safetensors"])))


def _optimizer_state(store, ref):
    m = _manifest(store, ref)
    return torch.load(io.BytesIO(store.get_bytes(_ref(m["files"]["optimizer.pt"]))), weights_only=True)


def _ref(obj):
    from cm2_trainer.store import Ref

    return Ref.from_json(obj)


def test_update_writes_a_checkpoint_and_a_valid_result(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    res = update_policy(_req(store, base_dir), cache=cache)
    decode_result(res.to_json())
    assert (res.version, res.reused) == (1, False)
    assert store.get_name(checkpoint_name("r1", 0)) == res.checkpoint
    m = _manifest(store, res.checkpoint)
    assert m["schema"] == "cm2.checkpoint/v1" and m["runId"] == "r1" and m["version"] == 1 and m["parent"] is None
    assert set(m["files"]) == {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"}
    assert json.loads(store.get_bytes(_ref(m["files"]["adapter_config.json"])))["r"] == 4
    w = _adapter(store, res.checkpoint)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in w.items())  # B moved off its zero init
    assert res.metrics["tokens"] > 0 and res.metrics["gradNorm"] > 0
    # the cached base is the plain model again (the adapter was unloaded)
    base = cache._value[0]
    assert not any("lora" in n for n, _ in base.named_parameters())


@pytest.mark.parametrize(
    "logprob, veto, weight, vetoed",
    [
        (None, 1e-4, None, None),  # no serving log-probs: no rollout-correction metrics (null on the wire)
        (-1e3, 1e-4, 2.0, 0.0),  # far below the trainer's: every known token's weight hits the cap 2
        (0.0, 0.5, None, 1.0),  # "certain" at serving, near-uniform here: weights < 0.5, both trajectories vetoed
    ],
)
def test_rollout_correction_metrics_reach_the_result(tmp_path, base_dir, cache, tok, logprob, veto, weight, vetoed):
    store = FsStore(tmp_path)
    batch = batch_obj(completions=True, tokenizer=tok, logprob=logprob)
    req = decode_update_request(request_obj(store.url, store.put_json(batch), base_dir, rolloutIsVeto=veto))
    res = update_policy(req, cache=cache)
    wire = res.to_json()
    decode_result(wire)
    m = wire["metrics"]
    assert m["isVetoedShare"] == vetoed
    if weight is None and vetoed is None:
        assert m["isMeanWeight"] is None
    elif weight is not None:
        assert m["isMeanWeight"] == pytest.approx(weight)
    else:
        assert 0 < m["isMeanWeight"] < veto


def _token_record(store, ref):
    return store.get_json(_ref(_manifest(store, ref)["tokens"]))


def test_the_manifest_records_each_trained_token_with_the_importance_weight_the_loss_used(
    tmp_path, base_dir, cache, tok
):
    """Serving log-probs on the tool-call steps alternate between far below the trainer's (weight capped at 2) and
    above it (weight exp(old - rollout) < 1); the reply steps have none (weight 1)."""
    store = FsStore(tmp_path)
    batch = batch_obj(completions=True, tokenizer=tok, logprob=0.0)
    for s in batch["samples"]:
        c = s["completions"][0]
        c["logprobs"] = [-3.0 if j % 2 else -9.0 for j in range(len(c["tokenIds"]))]
    req = decode_update_request(request_obj(store.url, store.put_json(batch), base_dir, rolloutIsCap=2.0))
    res = update_policy(req, cache=cache)
    decode_result(res.to_json())
    decode_manifest(_manifest(store, res.checkpoint))
    rec = _token_record(store, res.checkpoint)
    assert (rec["version"], rec["isCap"], rec["isVeto"], rec["truncated"]) == (1, 2.0, 1e-4, False)
    assert [s["episodeId"] for s in rec["samples"]] == [s["episodeId"] for s in batch["samples"]]
    known = []
    for s, sample in zip(rec["samples"], batch["samples"], strict=True):
        assert s["vetoed"] is False and [st["messageIndex"] for st in s["steps"]] == [2, 4]
        call, reply = s["steps"]
        c = sample["completions"][0]
        assert call["tokenIds"] == c["tokenIds"] and call["rolloutLogprob"] == c["logprobs"]
        assert "".join(call["tokens"]) == tok.decode(c["tokenIds"])
        assert "".join(reply["tokens"]) == sample["messages"][4]["content"] + "<|im_end|>"
        assert tok.decode(reply["tokenIds"]) == "".join(reply["tokens"])
        for st in (call, reply):
            n = len(st["tokenIds"])
            assert st["advantage"] == [sample["advantages"][0]["advantage"]] * n
            assert len(st["tokens"]) == len(st["oldLogprob"]) == len(st["isWeight"]) == n
            assert all(lp < 0 for lp in st["oldLogprob"])
        assert reply["rolloutLogprob"] == [None] * len(reply["tokenIds"]) and set(reply["isWeight"]) == {1.0}
        for old, rollout, w in zip(call["oldLogprob"], call["rolloutLogprob"], call["isWeight"], strict=True):
            assert w == pytest.approx(min(math.exp(old - rollout), 2.0), rel=1e-3)  # 5 significant digits
            known.append(w)
    assert 2.0 in known and min(known) < 1.0
    assert sum(known) / len(known) == pytest.approx(res.metrics["isMeanWeight"], rel=1e-4)
    assert res.metrics["tokens"] == sum(len(st["tokenIds"]) for s in rec["samples"] for st in s["steps"])


def test_without_rollout_correction_no_weights_are_recorded_and_a_manifest_without_tokens_still_loads(
    tmp_path, base_dir, cache
):
    store = FsStore(tmp_path)
    it0 = update_policy(_req(store, base_dir, rolloutIsCap=None), cache=cache)
    rec = _token_record(store, it0.checkpoint)
    assert (rec["isCap"], rec["isVeto"]) == (None, None) and len(rec["samples"]) == 2
    assert all(s["vetoed"] is None and all(st["isWeight"] is None for st in s["steps"]) for s in rec["samples"])
    # a manifest written before the record existed: read back as a committed checkpoint, and as a parent
    old = {k: v for k, v in _manifest(store, it0.checkpoint).items() if k != "tokens"}
    old_ref = store.put_json(old)
    assert store.create_name(checkpoint_name("old", 0), old_ref) == old_ref
    again = update_policy(_req(store, base_dir, run_id="old"), cache=cache)
    assert again.reused and again.checkpoint == old_ref and again.metrics == it0.metrics
    it1 = update_policy(_req(store, base_dir, iteration=1, parent=old_ref), cache=cache)
    assert it1.reused is False and "tokens" in _manifest(store, it1.checkpoint)


def test_idempotent_retry_does_not_update_twice(tmp_path, base_dir, cache, monkeypatch):
    store = FsStore(tmp_path)
    req = _req(store, base_dir)
    first = update_policy(req, cache=cache)
    objects = sorted(p.name for p in (tmp_path / "objects").rglob("*") if p.is_file())
    adapter_blob = (
        tmp_path
        / "objects/sha256"
        / _manifest(store, first.checkpoint)["files"]["adapter_model.safetensors"]["sha256"][:2]
    )
    mtimes = {p: p.stat().st_mtime_ns for p in adapter_blob.iterdir()}

    import cm2_trainer.update as upd

    monkeypatch.setattr(upd, "apply_update", lambda *a, **k: pytest.fail("trained twice"))
    second = update_policy(req, cache=cache)
    assert second.reused is True and second.checkpoint == first.checkpoint
    assert second.metrics == first.metrics and second.version == first.version
    assert sorted(p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()) == objects
    assert {p: p.stat().st_mtime_ns for p in adapter_blob.iterdir()} == mtimes


def test_crash_before_the_pointer_leaves_no_checkpoint_and_a_retry_commits(tmp_path, base_dir, cache, monkeypatch):
    store = FsStore(tmp_path)
    req = _req(store, base_dir)

    def crash(self, name, ref):
        raise KeyboardInterrupt("killed after the blobs, before the pointer")

    with monkeypatch.context() as mp:
        mp.setattr(FsStore, "create_name", crash)
        with pytest.raises(KeyboardInterrupt):
            update_policy(req, cache=cache)
    assert store.get_name(checkpoint_name("r1", 0)) is None
    orphans = {p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()}
    assert len(orphans) >= 4  # batch, adapter config + weights, optimizer (+ manifest)

    res = update_policy(req, cache=cache)
    assert res.reused is False and store.get_name(checkpoint_name("r1", 0)) == res.checkpoint
    # same seed, same parent (none), same data: the retry redoes the same update
    m = _manifest(store, res.checkpoint)
    assert m["files"]["adapter_model.safetensors"]["sha256"] in orphans


def test_resume_from_parent_loads_adapter_and_optimizer_state(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    it0 = update_policy(_req(store, base_dir), cache=cache)
    it1 = update_policy(_req(store, base_dir, iteration=1, parent=it0.checkpoint), cache=cache)
    assert it1.version == 2 and _manifest(store, it1.checkpoint)["parent"] == it0.checkpoint.to_json()
    opt0, opt1 = _optimizer_state(store, it0.checkpoint), _optimizer_state(store, it1.checkpoint)
    assert {float(s["step"]) for s in opt0["state"].values()} == {1.0}
    assert {float(s["step"]) for s in opt1["state"].values()} == {2.0}  # continued, not restarted
    w0, w1 = _adapter(store, it0.checkpoint), _adapter(store, it1.checkpoint)
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_zero_advantages_and_zero_kl_leave_the_weights_unchanged(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    it0 = update_policy(_req(store, base_dir), cache=cache)
    it1 = update_policy(
        _req(store, base_dir, iteration=1, parent=it0.checkpoint, advantages=(0.0, 0.0), klCoef=0.0), cache=cache
    )
    w0, w1 = _adapter(store, it0.checkpoint), _adapter(store, it1.checkpoint)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the parent adapter was loaded and not moved
    assert it1.metrics["gradNorm"] == 0.0 and it1.metrics["loss"] == 0.0
    assert _manifest(store, it1.checkpoint)["stats"]["skippedSteps"] == 1


def test_lora_shape_must_match_the_parent(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    it0 = update_policy(_req(store, base_dir), cache=cache)
    with pytest.raises(ContractError, match="loraRank 8.*parent adapter has 4"):
        update_policy(_req(store, base_dir, iteration=1, parent=it0.checkpoint, loraRank=8), cache=cache)
    # the failure left the cache usable
    update_policy(_req(store, base_dir, iteration=1, parent=it0.checkpoint), cache=cache)


def test_batch_for_another_iteration_is_rejected(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    ref = store.put_json(batch_obj(iteration=3))
    req = decode_update_request(request_obj(store.url, ref, base_dir, iteration=0))
    with pytest.raises(ContractError, match="batch is for run 'r1' iteration 3"):
        update_policy(req, cache=cache)


def test_same_inputs_give_the_same_adapter(tmp_path, base_dir, cache):
    a = update_policy(_req(FsStore(tmp_path / "a"), base_dir), cache=cache)
    b = update_policy(_req(FsStore(tmp_path / "b"), base_dir), cache=ModelCache())
    ma, mb = _manifest(FsStore(tmp_path / "a"), a.checkpoint), _manifest(FsStore(tmp_path / "b"), b.checkpoint)
    assert ma["files"]["adapter_model.safetensors"] == mb["files"]["adapter_model.safetensors"]


@pytest.mark.slow
def test_real_smollm2_gguf_update_with_the_contract_batch(tmp_path):
    """Opt-in (CM2_RUN_SLOW=1, ~1-3 min on 2 CPU cores): the fixture batch on the real SmolLM2 GGUF."""
    from conftest import CONTRACTS, gguf_path

    g = gguf_path()
    if g is None:
        pytest.skip("SmolLM2 GGUF not found: set CM2_GGUF")
    store = FsStore(tmp_path)
    batch = json.loads((CONTRACTS / "batch.json").read_text())
    batch["iteration"] = 0
    req = json.loads((CONTRACTS / "update_request.json").read_text())
    req.update(
        iteration=0,
        parent=None,
        batch=store.put_json(batch).to_json(),
        storeUrl=store.url,
        base={"kind": "gguf", "path": str(g)},
    )
    res = update_policy(decode_update_request(req))
    assert res.metrics["tokens"] > 0 and res.metrics["gradNorm"] > 0
    assert _manifest(store, res.checkpoint)["stats"]["chatTemplate"] == "cm2-tool-chatml"


def test_gradient_checkpointing_gives_the_same_update(tmp_path, base_dir):
    """`task start` runs the CPU trainer with --gradient-checkpointing (memory): it must not change the result."""
    from cm2_trainer.config import TrainerConfig

    adapters = []
    for ckpt in (False, True):
        store = FsStore(tmp_path / str(ckpt))
        # float64: the two orders of computation must agree on any CPU's kernels (see assert_same_update)
        res = update_policy(
            _req(store, base_dir),
            cache=ModelCache(),
            defaults=TrainerConfig(gradient_checkpointing=ckpt, dtype="float64"),
        )
        assert res.metrics["gradNorm"] > 0
        adapters.append(_adapter(store, res.checkpoint))
    plain, ckpt = adapters
    assert all(v.dtype == torch.float64 for v in plain.values())
    # LoRA B starts at zero, so the update is B itself; A (seeded) moves only by weight decay in a first step
    b = [k for k in plain if "lora_B" in k]
    assert b and all(float(plain[k].abs().max()) > 0 for k in b)
    assert_same_update({k: torch.zeros_like(plain[k]) for k in b}, {k: plain[k] for k in b}, {k: ckpt[k] for k in b})
    for k in plain.keys() - set(b):
        assert float((plain[k] - ckpt[k]).abs().max()) <= 1e-12 * float(plain[k].abs().max()), k


# -- RL from an SFT checkpoint (`init`) ----------------------------------------------------------------------------
def _sft_checkpoint(store, base_dir, cache, run_id="sft1", **sft):
    """A short LoRA SFT on the tiny base (rank 4, alpha 8: the RL requests' shape); its final checkpoint."""
    from test_sft import put_dataset, record
    from test_sft import request_obj as sft_request_obj

    from cm2_trainer.contract import decode_sft_request
    from cm2_trainer.sft import sft_train

    ds = put_dataset(store, "sft", [record("Paris"), record("Oslo")])
    req = decode_sft_request(sft_request_obj(store, base_dir, ds, run_id=run_id, batchSize=1, **sft))
    return sft_train(req, cache=cache).checkpoint


def _init_req(store, base_dir, init, **kw):
    req = _req(store, base_dir, **kw)
    return replace(req, init=init)


def test_rl_from_an_sft_checkpoint_starts_from_its_adapter_and_keeps_it_as_the_kl_reference(
    tmp_path, base_dir, cache, monkeypatch
):
    import cm2_trainer.update as upd

    store = FsStore(tmp_path)
    init = _sft_checkpoint(store, base_dir, cache)
    sft_w = _adapter(store, init)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in sft_w.items())  # the SFT moved off the init

    real = upd.apply_update
    seen = []

    def spy(model, *a, **k):
        out = real(model, *a, **k)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        seen.append(trainable)
        assert trainable and all(".default." in n for n in trainable)  # the reference adapter stays frozen
        return out

    monkeypatch.setattr(upd, "apply_update", spy)
    # zero advantages, a KL term: with policy == reference == the SFT model nothing moves and the KL is 0
    it0 = update_policy(_init_req(store, base_dir, init, advantages=(0.0, 0.0), klCoef=1e-3, lr=1e-9), cache=cache)
    assert it0.metrics["kl"] == pytest.approx(0.0, abs=1e-12) and it0.metrics["gradNorm"] == 0.0
    w0 = _adapter(store, it0.checkpoint)
    assert w0.keys() == sft_w.keys() and all(torch.equal(w0[k], sft_w[k]) for k in w0)
    assert _manifest(store, it0.checkpoint)["init"] == init.to_json()

    # a later iteration (parent given) still measures the KL against the SFT model, not the bare base
    it1 = update_policy(
        _init_req(store, base_dir, init, iteration=1, parent=it0.checkpoint, advantages=(0.0, 0.0), klCoef=1e-3),
        cache=cache,
    )
    assert it1.metrics["kl"] == pytest.approx(0.0, abs=1e-12)

    # the same adapter measured against the bare base (an RL checkpoint holding it, no init): KL > 0
    bare = dict(_manifest(store, it0.checkpoint))
    bare.update(init=None, files={k: v for k, v in bare["files"].items() if k != "optimizer.pt"})
    against_base = update_policy(
        _req(store, base_dir, run_id="bare", parent=store.put_json(bare), advantages=(0.0, 0.0), klCoef=1e-3),
        cache=cache,
    )
    assert against_base.reused is False and against_base.metrics["kl"] > 1e-4
    assert not any("lora" in n for n, _ in cache._value[0].named_parameters())  # both adapters unloaded


def test_a_parent_must_come_from_the_same_init(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    init = _sft_checkpoint(store, base_dir, cache)
    it0 = update_policy(_init_req(store, base_dir, init), cache=cache)
    with pytest.raises(ContractError, match="request.init is None, but the parent checkpoint was trained from init"):
        update_policy(_req(store, base_dir, iteration=1, parent=it0.checkpoint), cache=cache)


def test_init_must_be_a_lora_sft_checkpoint_of_the_same_shape(tmp_path, base_dir, cache):
    store = FsStore(tmp_path)
    init = _sft_checkpoint(store, base_dir, cache)
    with pytest.raises(ContractError, match=r"loraRank 8, loraAlpha 8\.0; the init \(SFT\) adapter has 4, 8"):
        update_policy(_init_req(store, base_dir, init, loraRank=8), cache=cache)
    full = _sft_checkpoint(store, base_dir, cache, run_id="sft-full", finetune="full")
    with pytest.raises(ContractError, match=r"is a full fine-tune SFT checkpoint.*\(trainer.base, kind 'hf'"):
        update_policy(_init_req(store, base_dir, full), cache=cache)
    rl = update_policy(_req(store, base_dir), cache=cache)
    with pytest.raises(
        ContractError, match="request.init points at 'cm2.checkpoint/v1', expected a cm2.sft-checkpoint"
    ):
        update_policy(_init_req(store, base_dir, rl.checkpoint, iteration=1), cache=cache)
    # the failures left the cache usable
    update_policy(_init_req(store, base_dir, init, iteration=2), cache=cache)
