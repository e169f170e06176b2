"""Throughput and memory check for a lent GPU machine (no internet, no weights needed).

    python -m cm2_trainer.gpu_check            # ~0.85B-param Llama-style model, bf16, on cuda
    python -m cm2_trainer.gpu_check --tiny     # a tiny model on CPU, to test this script anywhere

A randomly initialised model gets a LoRA adapter and a few updates on a synthetic batch through the same
code path as a real update (`loss.apply_update`: reference pass with the adapter off, clipped PG + KL loss,
AdamW step). The "ceiling" is a plain forward+backward (cross-entropy) of the same micro-batches on the
same model, without the reference pass or optimizer step. Prints ONE JSON line:

    {"params":…, "tokens_per_s":…, "peak_mem_gb":…, "ceiling_tokens_per_s":…, "ceiling_peak_mem_gb":…, …}

tokens_per_s counts every sequence token (prompt and completion) per second of update wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import torch

from .config import TrainerConfig
from .loss import apply_update, plan_batches
from .render import RenderedSample

FULL = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
)


def synthetic_batch(n: int, seq_len: int, vocab: int, seed: int) -> list[RenderedSample]:
    """n samples: a prompt (first 40%) then three assistant segments with advantages of either sign."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(seq_len)]
        mask = [0] * seq_len
        adv = [0.0] * seq_len
        a = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.5)
        seg = int(seq_len * 0.6) // 3
        for s in range(3):
            lo = int(seq_len * 0.4) + s * seg
            for k in range(lo + seg // 4, lo + seg):  # a short "tool result" gap before each segment
                mask[k], adv[k] = 1, a
        out.append(RenderedSample(f"synthetic-{i}", ids, mask, adv, [None] * seq_len))
    return out


def build_model(shape: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs: dict[str, Any] = {**shape, "max_position_embeddings": 8192, "tie_word_embeddings": False}
    cfg = LlamaConfig(**kwargs)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def run_check(tiny: bool, *, samples: int, seq_len: int, updates: int, micro_batch_size: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    if tiny:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device; use --tiny to run the check on CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
    shape = TINY if tiny else FULL
    model = build_model(shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    cfg = TrainerConfig(lr=1e-5, kl_coef=1e-3, micro_batch_size=micro_batch_size, lora_rank=16, lora_alpha=32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules, task_type="CAUSAL_LM"
        ),
    )
    opt = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
    )
    batch = synthetic_batch(samples, seq_len, shape["vocab_size"], seed=1)
    seq_tokens = samples * seq_len

    # warm-up (kernels, allocator), then timed updates through the real update path
    apply_update(peft_model, opt, batch, cfg, seed=0, pad_id=0, device=device)
    _reset_peak(device)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    for u in range(updates):
        metrics = apply_update(peft_model, opt, batch, cfg, seed=u, pad_id=0, device=device)
    _sync(device)
    upd_s = (time.perf_counter() - t0) / updates
    peak = _peak_gb(device)

    # ceiling: plain forward + backward of the same micro-batches, no reference pass, no optimizer step
    plan = plan_batches(batch, cfg, 0, 0, device)
    peft_model.train()

    def plain() -> None:
        for mini in plan:
            for mb in mini:
                out = peft_model(
                    input_ids=mb.input_ids, attention_mask=mb.attention_mask, labels=mb.input_ids, use_cache=False
                )
                out.loss.backward()
        peft_model.zero_grad(set_to_none=True)

    plain()
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(updates):
        plain()
    _sync(device)
    ceil_s = (time.perf_counter() - t0) / updates
    return {
        "params": params,
        "tokens_per_s": round(seq_tokens / upd_s, 1),
        "peak_mem_gb": round(peak, 3),
        "ceiling_tokens_per_s": round(seq_tokens / ceil_s, 1),
        "ceiling_peak_mem_gb": round(_peak_gb(device), 3),
        "seconds_per_update": round(upd_s, 4),
        "tokens_per_update": seq_tokens,
        "loss_tokens_per_update": int(metrics.get("tokens", 0)),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m cm2_trainer.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (seconds), to test this script")
    p.add_argument("--samples", type=int, default=None, help="samples per update (default 32; tiny 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default 2048; tiny 64)")
    p.add_argument("--updates", type=int, default=None, help="timed updates after one warm-up (default 3; tiny 1)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="samples per forward (default 4; tiny 2)")
    a = p.parse_args(argv)
    res = run_check(
        a.tiny,
        samples=a.samples or (4 if a.tiny else 32),
        seq_len=a.seq_len or (64 if a.tiny else 2048),
        updates=a.updates or (1 if a.tiny else 3),
        micro_batch_size=a.micro_batch_size or (2 if a.tiny else 4),
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
