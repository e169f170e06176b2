"""Benchmark: one policy update of a GRPO group with and without shared-prompt packing, side by side.

    python -m cm2_trainer.bench_pack                      # SmolLM2-135M shape, demo-sized group, on CPU
    python -m cm2_trainer.bench_pack --prompt 1500 --group 8 --device cuda
    python -m cm2_trainer.bench_pack --tiny               # seconds, to test this script

A randomly initialised model of the embedded policy's shape (no weights needed) gets a LoRA adapter; the
batch is one group: `group` samples with the same `prompt`-token prefix and their own `completion`-token
continuations (the demo: ~2.8k-token tool prompt, ≤160-token replies, G=4). Each round runs the real update
path (`loss.apply_update`, reference pass included) once packed and once unpacked, alternating which goes
first; the medians are compared as a ratio measured in the same process. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import torch

from .config import TrainerConfig
from .gpu_check import TINY, build_model
from .loss import apply_update, plan_batches
from .render import RenderedSample

# SmolLM2-135M-Instruct (the embedded policy)
SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
)


def group_batch(group: int, prompt: int, completion: int, vocab: int, seed: int) -> list[RenderedSample]:
    rng = random.Random(seed)
    head = [rng.randrange(3, vocab) for _ in range(prompt)]
    out = []
    for i in range(group):
        tail = [rng.randrange(3, vocab) for _ in range(completion)]
        ids = head + tail
        adv = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.5)
        out.append(
            RenderedSample(f"bench-{i}", ids, [0] * prompt + [1] * completion, [adv] * len(ids), [None] * len(ids))
        )
    return out


def run(
    *, tiny: bool, device: str, group: int, prompt: int, completion: int, rounds: int, checkpointing: bool
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shape = TINY if tiny else SMOLLM2
    model = build_model(shape, dev, dtype)
    cfg = TrainerConfig(kl_coef=1e-4, gradient_checkpointing=checkpointing)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules, task_type="CAUSAL_LM"
        ),
    )
    if checkpointing:
        peft_model.gradient_checkpointing_enable()
        peft_model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    batch = group_batch(group, prompt, completion, shape["vocab_size"], seed=1)
    variants = {"packed": cfg, "unpacked": cfg.replace(pack_max_tokens=0)}
    rows = {k: len(plan_batches(batch, c, 0, 0, dev, peft_model)[0]) for k, c in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for k in ("packed", "unpacked") if r % 2 == 0 else ("unpacked", "packed"):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            apply_update(peft_model, opt, batch, variants[k], seed=r, pad_id=0, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(dev),
        "group": group,
        "prompt": prompt,
        "completion": completion,
        "rounds": rounds,
        "gradient_checkpointing": checkpointing,
        "rows": rows,
        "packed_s": round(med["packed"], 3),
        "unpacked_s": round(med["unpacked"], 3),
        "speedup": round(med["unpacked"] / med["packed"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m cm2_trainer.bench_pack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="tiny model (seconds), to test this script")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--group", type=int, default=4, help="samples sharing the prompt (default %(default)s)")
    p.add_argument("--prompt", type=int, default=None, help="shared prompt tokens (default 2800; tiny 64)")
    p.add_argument("--completion", type=int, default=None, help="tokens per continuation (default 160; tiny 16)")
    p.add_argument("--rounds", type=int, default=2, help="updates per variant (default %(default)s)")
    p.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    a = p.parse_args(argv)
    res = run(
        tiny=a.tiny,
        device=a.device,
        group=a.group,
        prompt=a.prompt or (64 if a.tiny else 2800),
        completion=a.completion or (16 if a.tiny else 160),
        rounds=a.rounds,
        checkpointing=not a.no_checkpointing,
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
