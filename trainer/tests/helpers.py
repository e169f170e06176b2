"""Test helpers: a hermetic byte-level ChatML tokenizer with tool support, tiny models, sample batches, and a
real S3-protocol server (moto) for the store contract tests."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from cm2_trainer.engines import stop_process

# ChatML with tools (Qwen-like, simplified). Tool calls render as <tool_call>{json}</tool_call>.
CHATML_TOOLS_TEMPLATE = (
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}"
    "{% else %}{% set sys = 'You are a helpful assistant.' %}{% set rest = messages %}{% endif %}"
    "<|im_start|>system{{ '\\n' }}{{ sys }}"
    "{% if tools %}{{ '\\n\\n# Tools' }}{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}{% endif %}"
    "<|im_end|>{{ '\\n' }}"
    "{% for m in rest %}"
    "{% if m.role == 'assistant' %}<|im_start|>assistant{{ '\\n' }}{{ m.content }}"
    '{% for c in m.tool_calls or [] %}<tool_call>{"name": "{{ c.function.name }}", "arguments": '
    "{{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>{{ '\\n' }}"
    "{% else %}<|im_start|>{{ m.role }}{{ '\\n' }}{{ m.content }}<|im_end|>{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def hermetic_tokenizer() -> Any:
    """Byte-level tokenizer (one token per byte, no merges) plus ChatML specials: ~259 tokens, no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TOOLS_TEMPLATE
    return fast


def assert_same_update(before: dict[str, Any], a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-7) -> None:
    """Two updates from the same weights `before` reached the same weights: per tensor, the largest difference
    between `a` and `b` is at most `rtol` times the largest change the update made (|a - before|).

    Scaled to the update, not a bare absolute tolerance: float results depend on the CPU's kernels (AVX-512 and
    AVX2 sum in different orders), so equality checks run in float64. Some pieces stay float32 inside a float64
    model (transformers' rotary tables, parts of attention's backward on CPU): two layouts of the same batch were
    measured to give gradients that agree to ~1e-10 relative, so 1e-7 leaves three orders of magnitude.
    """
    assert a.keys() == b.keys() == before.keys()
    for k in a:
        step = float((a[k] - before[k]).abs().max())
        diff = float((a[k] - b[k]).abs().max())
        assert diff <= rtol * step + 1e-300, f"{k}: updates differ by {diff:.3g}, update size {step:.3g}"


def trainable(model: Any) -> dict[str, Any]:
    """A copy of the trainable parameters (the LoRA weights), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LlamaForCausalLM(cfg)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def transcript(city: str = "Paris", reply: str = "It is sunny in Paris.") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": f"Weather in {city}?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temp_c": 21, "sky": "clear"})},
        {"role": "assistant", "content": reply},
    ]


def batch_obj(
    run_id: str = "r1",
    iteration: int = 0,
    advantages: tuple[float, float] = (0.5, -0.5),
    completions: bool = False,
    tokenizer: Any = None,
    logprob: float | None = None,
) -> dict[str, Any]:
    samples = []
    for k, (city, a) in enumerate(zip(["Paris", "Oslo"], advantages, strict=True)):
        s: dict[str, Any] = {
            "episodeId": f"{run_id}/it-{iteration}/task-0/ep-{k}",
            "groupId": "task-0",
            "tools": TOOLS,
            "messages": transcript(city, f"It is sunny in {city}."),
            "advantages": [{"messageIndex": 2, "advantage": a}, {"messageIndex": 4, "advantage": a}],
        }
        if completions:
            text = '<tool_call>{"name": "get_weather", "arguments": {"city": "%s"}}</tool_call><|im_end|>' % city
            ids = tokenizer.encode(text, add_special_tokens=False)
            s["completions"] = [{"messageIndex": 2, "tokenIds": ids}]
            if logprob is not None:  # the serving engine's log-prob of every sampled token
                s["completions"][0]["logprobs"] = [logprob] * len(ids)
        samples.append(s)
    return {"schema": "cm2.batch/v1", "runId": run_id, "iteration": iteration, "samples": samples}


def request_obj(
    store_url: str,
    batch_ref: Any,
    base_dir: Path,
    *,
    run_id: str = "r1",
    iteration: int = 0,
    parent: Any = None,
    **trainer: Any,
) -> dict[str, Any]:
    t = {
        "lr": 1e-3,
        "klCoef": 0.0,
        "clipLow": 0.2,
        "clipHigh": 0.2,
        "clipRatioC": 3.0,
        "miniBatches": 1,
        "loraRank": 4,
        "loraAlpha": 8,
        "maxGradNorm": 1.0,
        "seed": 0,
    }
    t.update(trainer)
    return {
        "runId": run_id,
        "iteration": iteration,
        "batch": batch_ref.to_json(),
        "base": {"kind": "hf", "path": str(base_dir)},
        "parent": parent.to_json() if parent is not None else None,
        "storeUrl": store_url,
        "trainer": t,
    }


# -- an S3-protocol server ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(timeout_s: float = 20.0) -> Iterator[str]:
    """Run moto's S3 server (`python -m moto.server`, the `moto[server]` test extra) on 127.0.0.1 and a free
    port; yields its endpoint URL and stops it afterwards. It accepts any credentials."""
    port = free_port()
    fd, name = tempfile.mkstemp(prefix="cm2-moto-", suffix=".log")
    log_path = Path(name)
    with open(fd, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(proc, port, timeout_s, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log_path.unlink(missing_ok=True)


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode} before listening; log:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"moto server did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; log:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as e:
        return f"(unreadable: {e})"
