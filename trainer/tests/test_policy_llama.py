"""The llama.cpp policy engine: peft adapter -> GGUF LoRA conversion, and the policy server serving it.

The conversion tests need only the SmolLM2 GGUF (CM2_GGUF or .cm2/models/). The serving tests also need a
built llama-server: CM2_LLAMA_SERVER names it (`deno task test` sets it and then a missing binary is a
failure, not a skip), else .cm2/llama.cpp/build/bin/llama-server is used when present.

The fidelity check is the point of the whole engine: the policy that llama-server serves after a publish must
be the policy the trainer holds. llama.cpp computes with the Q4_1 weights (and 8-bit activations) where
transformers uses their dequantised float32 copies, so per-token log-probabilities agree closely but not
bit for bit; the test asserts they agree far better with the adapter than without it (a wrong conversion,
e.g. without the q/k row permutation, gives ~0.3 nats of error, see docs/decisions.md).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import gguf_path

from cm2_trainer.engines import LlamaCppEngine, default_llama_server
from cm2_trainer.lora_gguf import LoraConversionError, _permute_rows, convert_adapter
from cm2_trainer.policy import PolicyModel
from cm2_trainer.serve import POLICY_VERSION_HEADER, serve_in_thread

GGUF = gguf_path()
needs_gguf = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF not found (CM2_GGUF or .cm2/models/)")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_server_binary() -> str:
    env = os.environ.get("CM2_LLAMA_SERVER")
    if env:
        assert Path(env).is_file(), f"CM2_LLAMA_SERVER={env} does not exist (deno task setup builds it)"
        return env
    found = default_llama_server()
    if not found:
        pytest.skip("llama-server is not built (deno task setup builds it; or set CM2_LLAMA_SERVER)")
    return found


@pytest.fixture(scope="module")
def smollm2() -> Any:
    """The SmolLM2 base as transformers sees it (dequantised from the GGUF, cached beside it)."""
    if GGUF is None:
        pytest.skip("SmolLM2 GGUF not found")
    from cm2_trainer.models import load_base_model, load_tokenizer

    return load_base_model(str(GGUF)), load_tokenizer(str(GGUF))


def make_adapter(
    base: Any, out: Path, *, seed: int, scale: float, r: int = 8, alpha: int = 16, use_rslora: bool = False
) -> tuple[Path, Any]:
    """A LoRA adapter on all projections with random B (peft starts B at zero), saved like the trainer saves."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, use_rslora=use_rslora))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, scale)
    peft_model.save_pretrained(str(out))
    return out, peft_model


def unwrap(peft_model: Any) -> Any:
    return peft_model.unload()  # the base model without LoRA layers, for the next test


# -- conversion ---------------------------------------------------------------------------------------------
@needs_gguf
def test_converted_adapter_has_llama_cpp_names_shapes_and_scaling(smollm2: Any, tmp_path: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    base, _ = smollm2
    adir, pm = make_adapter(base, tmp_path / "a", seed=1, scale=0.1, r=8, alpha=16)
    try:
        summary = convert_adapter(adir, GGUF, tmp_path / "a.gguf")
    finally:
        unwrap(pm)
    n_layers = base.config.num_hidden_layers
    assert summary["modules"] == 7 * n_layers and summary["arch"] == "llama"
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    assert r.get_field("general.type").contents() == "adapter"
    assert r.get_field("adapter.type").contents() == "lora"
    assert r.get_field("general.architecture").contents() == "llama"
    assert r.get_field("adapter.lora.alpha").contents() == 0.0
    got = {t.name: np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in r.tensors}
    assert len(got) == 2 * 7 * n_layers
    src = load_file(str(adir / "adapter_model.safetensors"))
    pre = "base_model.model.model.layers.3."
    heads, kv_heads = base.config.num_attention_heads, base.config.num_key_value_heads
    for module, name, permute in [
        ("self_attn.q_proj", "attn_q", heads),
        ("self_attn.k_proj", "attn_k", kv_heads),
        ("self_attn.v_proj", "attn_v", 0),
        ("mlp.down_proj", "ffn_down", 0),
    ]:
        a = src[f"{pre}{module}.lora_A.weight"]
        b = src[f"{pre}{module}.lora_B.weight"] * (16 / 8)  # peft's alpha / r, folded into B
        if permute:
            b = _permute_rows(b, permute)
        np.testing.assert_array_equal(got[f"blk.3.{name}.weight.lora_a"], a)
        np.testing.assert_allclose(got[f"blk.3.{name}.weight.lora_b"], b, rtol=1e-6)
    # The permutation really moves rows (else this test could not tell).
    q_b = src[f"{pre}self_attn.q_proj.lora_B.weight"]
    assert not np.array_equal(_permute_rows(q_b, heads), q_b)


@needs_gguf
def test_rslora_scaling_is_folded_in(smollm2: Any, tmp_path: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    base, _ = smollm2
    adir, pm = make_adapter(base, tmp_path / "a", seed=2, scale=0.1, r=4, alpha=8, use_rslora=True)
    try:
        convert_adapter(adir, GGUF, tmp_path / "a.gguf")
    finally:
        unwrap(pm)
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    t = next(t for t in r.tensors if t.name == "blk.0.attn_v.weight.lora_b")
    src = load_file(str(adir / "adapter_model.safetensors"))[
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    ]
    np.testing.assert_allclose(np.array(t.data).reshape(src.shape), src * (8 / 2), rtol=1e-6)  # alpha / sqrt(r)


@needs_gguf
def test_an_adapter_of_another_model_or_kind_is_refused_with_the_reason(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=300,
        )
    )
    torch.manual_seed(0)
    get_peft_model(tiny, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(str(tmp_path / "t"))
    with pytest.raises(LoraConversionError, match="another base model"):
        convert_adapter(tmp_path / "t", GGUF, tmp_path / "t.gguf")
    assert not (tmp_path / "t.gguf").exists() and not list(tmp_path.glob(".t.gguf*"))
    cfg = json.loads((tmp_path / "t" / "adapter_config.json").read_text())
    (tmp_path / "t" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(LoraConversionError, match="DoRA"):
        convert_adapter(tmp_path / "t", GGUF, tmp_path / "t.gguf")


# -- serving ------------------------------------------------------------------------------------------------
def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def chat(port: int, **extra: Any) -> tuple[list[int], list[float], str]:
    status, headers, r = post(
        port,
        "/chat/completions",
        {
            "model": "policy",
            "messages": PROMPT,
            "temperature": 0,
            "max_tokens": 20,
            "return_token_ids": True,
            "logprobs": True,
            **extra,
        },
    )
    assert status == 200, r
    c = r["choices"][0]
    return c["token_ids"], [t["logprob"] for t in c["logprobs"]["content"]], headers[POLICY_VERSION_HEADER]


@pytest.fixture(scope="module")
def llama_served(smollm2: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = llama_server_binary()
    _, tok = smollm2
    work = tmp_path_factory.mktemp("llama-policy")
    engine = LlamaCppEngine(binary, str(GGUF), threads=2, parallel=2, ctx_per_slot=2048, work_dir=str(work))
    pm = PolicyModel(None, tok, version=0, name="smollm2", engine=engine)
    srv, _ = serve_in_thread(pm)
    try:
        yield pm, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        engine.close()


@needs_gguf
def test_served_adapter_is_the_trainers_policy(smollm2: Any, llama_served: Any, tmp_path: Path) -> None:
    import torch

    from cm2_trainer.store import FsStore

    base, tok = smollm2
    pm, port = llama_served
    base_ids, _, v0 = chat(port)
    assert v0 == "0" and base_ids
    adir, peft_model = make_adapter(base, tmp_path / "a", seed=3, scale=0.15)
    try:
        # Published the way the trainer publishes: a checkpoint manifest in the store.
        store = FsStore(tmp_path / "store")
        files = {f.name: store.put_file(f).to_json() for f in adir.iterdir() if f.is_file()}
        ref = store.put_json({"schema": "cm2.checkpoint/v1", "files": files})
        status, headers, st = post(
            port,
            "/load_lora_adapter",
            {"lora_name": "run-v1", "checkpoint": ref.to_json(), "store_url": store.url, "version": 1},
        )
        assert status == 200 and st["version"] == 1 and headers[POLICY_VERSION_HEADER] == "1", st
        ids, served_lp, v1 = chat(port)
        assert v1 == "1" and ids != base_ids and len(served_lp) == len(ids)

        prompt = pm.render(PROMPT, None)
        x = torch.tensor([prompt + ids])

        def logprobs() -> list[float]:
            with torch.no_grad():
                lp = peft_model(x).logits[0].float().log_softmax(-1)
            return [lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)]

        with_adapter = logprobs()
        with peft_model.disable_adapter():
            without = logprobs()
    finally:
        unwrap(peft_model)
    err = statistics.mean(abs(a - b) for a, b in zip(served_lp, with_adapter, strict=False))
    off = statistics.mean(abs(a - b) for a, b in zip(served_lp, without, strict=False))
    assert err < 0.12, f"served log-probs differ from the trainer's policy by {err:.3f} nats/token"
    assert off > 3 * err and off > 0.2, f"the adapter barely matters ({off:.3f} vs {err:.3f}): the test cannot tell"
    # Back to the base model: the base outputs again.
    status, _, st = post(port, "/unload_lora_adapter", {})
    assert status == 200 and st["version"] == 0
    assert chat(port)[0] == base_ids


@needs_gguf
def test_concurrent_requests_and_a_publish_never_mix_versions(smollm2: Any, llama_served: Any, tmp_path: Path) -> None:
    base, _ = smollm2
    _, port = llama_served
    adir, pm = make_adapter(base, tmp_path / "a", seed=4, scale=0.15)
    unwrap(pm)
    results: list[tuple[list[int], str]] = []
    lock = threading.Lock()

    def one(seed: int) -> None:
        ids, _, v = chat(port, temperature=0.8, seed=seed, max_tokens=12)
        with lock:
            results.append((ids, v))

    threads = [threading.Thread(target=one, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    status, _, st = post(port, "/load_lora_adapter", {"lora_name": "v7", "lora_path": str(adir), "version": 7})
    assert status == 200, st
    after = [chat(port, temperature=0.8, seed=s, max_tokens=12) for s in range(2)]
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 4 and all(v in ("0", "7") for _, v in results)  # each on exactly one version
    assert all(v == "7" for _, _, v in after)  # everything started after the publish returned runs on it
    # A broken adapter (another model's) is a 400 and the live version keeps serving.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=300,
        )
    )
    torch.manual_seed(0)
    get_peft_model(tiny, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(
        str(tmp_path / "bad")
    )
    status, _, err = post(
        port, "/load_lora_adapter", {"lora_name": "bad", "lora_path": str(tmp_path / "bad"), "version": 8}
    )
    assert status == 400 and "another base model" in err["error"]["message"]
    assert chat(port)[2] == "7"
    post(port, "/unload_lora_adapter", {})


def prompt_tokens_read(pm: PolicyModel) -> float:
    """llama-server's own count of prompt tokens it has processed (its Prometheus endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pm.engine._port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return float(
        next(line.split()[-1] for line in text.splitlines() if line.startswith("llamacpp:prompt_tokens_total"))
    )


@needs_gguf
def test_a_groups_first_requests_share_one_prompt_pass(llama_served: Any) -> None:
    pm, port = llama_served
    # A prompt no earlier test used (nothing cached), long enough that reading it 4 times would show.
    system = "You are a travel agent. " + " ".join(f"Rule {i}: answer politely about trip {i}." for i in range(60))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Find me a flight to Oslo."}]
    n_prompt = len(pm.render(messages, None))
    before = prompt_tokens_read(pm)
    outs: list[tuple[list[int], str]] = []
    lock = threading.Lock()

    def rollout(seed: int) -> None:
        status, headers, r = post(
            port,
            "/chat/completions",
            {
                "model": "policy",
                "messages": messages,
                "temperature": 1.0,
                "max_tokens": 16,
                "seed": seed,
                "return_token_ids": True,
            },
        )
        assert status == 200, r
        with lock:
            outs.append((r["choices"][0]["token_ids"], headers[POLICY_VERSION_HEADER]))

    threads = [threading.Thread(target=rollout, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    read = prompt_tokens_read(pm) - before
    assert len(outs) == 4
    assert n_prompt * 0.9 <= read < n_prompt * 1.5, f"read {read} prompt tokens for 4 rollouts of {n_prompt}"
    assert len({tuple(ids) for ids, _ in outs}) > 1  # still G different samples
    # A later step of one rollout (an assistant message in it) is not held back for coalescing.
    follow = messages + [
        {"role": "assistant", "content": pm.tokenizer.decode(outs[0][0], skip_special_tokens=True)},
        {"role": "user", "content": "And back?"},
    ]
    status, _, r = post(
        port, "/chat/completions", {"model": "policy", "messages": follow, "temperature": 0, "max_tokens": 4}
    )
    assert status == 200, r
