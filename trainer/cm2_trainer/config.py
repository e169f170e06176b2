"""Trainer hyperparameters: one dataclass, every field with its help text.

Defaults follow the released CM2 script (`traj_n48.sh`, see docs/cm2-reference.md §5.8 and §6) where it
sets a value, and verl's defaults otherwise. The paper's values are given in the help text.
The wire request carries a subset of these fields (camelCase, see tests/contracts/README.md); the rest
keep their defaults unless the worker is started with overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


def _fl(default: list[Any], help: str) -> Any:
    return field(default_factory=lambda: list(default), metadata={"help": help})


LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainerConfig:
    lr: float = _f(
        1e-5,
        "AdamW learning rate of the LoRA adapter, constant, no warmup. CM2 ran full fine-tuning (script 1e-6, "
        "paper 3e-6); a LoRA adapter needs about 10x a full fine-tune's rate, so the default is 10x the "
        "script's (docs/decisions.md).",
    )
    kl_coef: float = _f(
        1e-4,
        "Coefficient of the low-variance KL (k3) loss to the reference model (the base without the adapter). "
        "CM2 script 1e-4, paper 1e-3. 0 skips the reference forward pass.",
    )
    clip_low: float = _f(0.2, "PPO clip: the ratio is clipped below at 1 - clip_low.")
    clip_high: float = _f(0.2, "PPO clip: the ratio is clipped above at 1 + clip_high.")
    clip_ratio_c: float = _f(
        3.0,
        "Dual clip for negative advantages: the per-token loss is capped at -A * clip_ratio_c. Must be > 1.",
    )
    mini_batches: int = _f(
        1,
        "Number of optimizer steps per update (the batch is split into this many mini-batches, one epoch). "
        "1 = one step, exactly on-policy (ratio 1, clipping inactive), as in the CM2 script. "
        ">1: later mini-batches are clipped against the old log-probs computed before the first step.",
    )
    micro_batch_size: int = _f(
        1,
        "Samples per forward/backward pass (right-padded; gradients are accumulated over a mini-batch). "
        "Memory/speed knob only: the loss is a token-mean over the whole mini-batch whatever this is. "
        "1 is memory-safe for long transcripts; raise it for short ones on a GPU.",
    )
    pack_max_tokens: int = _f(
        8192,
        "Samples that share a prompt (a GRPO group's first step) are packed into one row of at most this many "
        "tokens: the prompt once, then each continuation (same log-probs as separate rows; the mask is "
        "tokens^2 entries). 0 turns packing off. Needs SDPA or eager attention; other kernels do not pack.",
    )
    max_grad_norm: float = _f(1.0, "Gradient clipping by global L2 norm (CM2/verl: 1.0).")
    weight_decay: float = _f(0.01, "AdamW decoupled weight decay (verl default 0.01).")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas (verl default 0.9, 0.999).")
    eps: float = _f(1e-8, "AdamW epsilon.")
    lora_rank: int = _f(8, "LoRA rank r. CM2 trains all weights; cm2 trains a LoRA adapter on the base.")
    lora_alpha: int = _f(16, "LoRA alpha (scaling = alpha / rank).")
    lora_dropout: float = _f(
        0.0,
        "LoRA dropout. Keep 0: with dropout the training forward differs from the no-grad passes that "
        "give the old and reference log-probs.",
    )
    target_modules: list[str] = _fl(DEFAULT_TARGET_MODULES, "Module names that get LoRA adapters (Llama/Qwen names).")
    loss_agg: str = _f(
        "token-mean",
        "Loss aggregation over a mini-batch. 'token-mean': every loss token weighs the same (sum / tokens). "
        "'seq-mean-token-mean': the mean over each trajectory's loss tokens, then the mean over trajectories, "
        "so a short trajectory's tokens weigh more; what the released CM2 run optimises (verl token-mean per "
        "micro-batch of one trajectory, each scaled by 1 / micro-batches).",
    )
    rollout_is_cap: float | None = _f(
        2.0,
        "Rollout correction: truncated importance weight per loss token against the serving stack's log-probs "
        "(batch completions[].logprobs), min(exp(old_logp - rollout_logp), cap), detached. Tokens without "
        "serving log-probs get 1. CM2 ran with 2.0 (rollout_is=token); None = off (no weights, no veto).",
    )
    rollout_is_veto: float = _f(
        1e-4,
        "Rollout correction veto: a trajectory with any loss token whose uncapped weight "
        "exp(old_logp - rollout_logp) is below this contributes nothing (its weights become 0; the "
        "aggregation's denominators are unchanged). CM2 ran with 1e-4. 0 = no veto.",
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (saves GPU memory).")
    dtype: str = _f(
        "auto",
        "Model dtype: 'auto' = bfloat16 on GPU, float32 on CPU; or 'float32' / 'bfloat16', "
        "or 'float64' (slow; for checks that two computations agree on any CPU's kernels).",
    )
    device: str = _f("auto", "'auto' = cuda if available else cpu; or an explicit torch device string.")
    seed: int = _f(0, "Seed; the update is seeded with (seed, iteration) for the LoRA init and mini-batch order.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"Trainer config {name} is {getattr(self, name)!r}, expected {why}")

        need(self.lr > 0, "lr", "> 0")
        need(self.kl_coef >= 0, "kl_coef", ">= 0")
        need(0 <= self.clip_low < 1, "clip_low", "in [0, 1)")
        need(self.clip_high >= 0, "clip_high", ">= 0")
        need(self.clip_ratio_c > 1, "clip_ratio_c", "> 1")
        need(self.mini_batches >= 1, "mini_batches", ">= 1")
        need(self.micro_batch_size >= 1, "micro_batch_size", ">= 1")
        need(self.pack_max_tokens >= 0, "pack_max_tokens", ">= 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "> 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two values in [0, 1)")
        need(self.lora_rank >= 1, "lora_rank", ">= 1")
        need(self.lora_alpha > 0, "lora_alpha", "> 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)")
        need(len(self.target_modules) > 0, "target_modules", "a non-empty list")
        need(self.loss_agg in LOSS_AGG_MODES, "loss_agg", " or ".join(repr(m) for m in LOSS_AGG_MODES))
        need(self.rollout_is_cap is None or self.rollout_is_cap > 0, "rollout_is_cap", "None or > 0")
        need(0 <= self.rollout_is_veto < 1, "rollout_is_veto", "in [0, 1)")
        need(
            self.dtype in ("auto", "float32", "bfloat16", "float64"),
            "dtype",
            "'auto', 'float32', 'bfloat16' or 'float64'",
        )

    def replace(self, **changes: Any) -> "TrainerConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """All fields, camelCase (as every JSON document of the contract)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return {_camel(k): v for k, v in d.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


# Wire name (camelCase, request.trainer) -> TrainerConfig field. The wire carries only these.
WIRE_FIELDS: dict[str, str] = {
    "lr": "lr",
    "klCoef": "kl_coef",
    "clipLow": "clip_low",
    "clipHigh": "clip_high",
    "clipRatioC": "clip_ratio_c",
    "miniBatches": "mini_batches",
    "loraRank": "lora_rank",
    "loraAlpha": "lora_alpha",
    "maxGradNorm": "max_grad_norm",
    "lossAgg": "loss_agg",
    "rolloutIsCap": "rollout_is_cap",
    "rolloutIsVeto": "rollout_is_veto",
    "seed": "seed",
}


def help_text() -> str:
    """All fields with their defaults and help, for `--help` output and docs."""
    lines = []
    for f in dataclasses.fields(TrainerConfig):
        factory: Any = f.default_factory  # MISSING when the field has a plain default
        default = f.default if f.default is not dataclasses.MISSING else factory()
        lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


# -- cold-start SFT (`sftTrain`) --------------------------------------------------------------------------------
FINETUNE_MODES = ("lora", "full")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class SftConfig:
    """Hyperparameters of cold-start SFT, the one place their defaults live (tests/contracts/sft_defaults.json
    pins them, and the TypeScript run config is pinned to the same file). Every field is on the wire
    (`request.sft`, camelCase); the rest of the machinery (device, dtype, LoRA target modules, AdamW betas,
    eps and weight decay, micro-batch size, gradient checkpointing) is the worker's `TrainerConfig`."""

    lr: float = _f(
        1e-4,
        "Peak AdamW learning rate. The released CM2 SFT ran full fine-tuning at 1e-5; a LoRA adapter needs "
        "about 10x a full fine-tune's rate (as the RL default, docs/decisions.md), so the default is 1e-4. "
        "Use about 1e-5 with finetune 'full'.",
    )
    epochs: int = _f(2, "Passes over the training dataset; each epoch visits the samples in its own seeded order.")
    batch_size: int = _f(8, "Samples per optimizer step (token-mean NLL over the step's samples).")
    max_steps: int = _f(0, "Cap on optimizer steps (0 = no cap: ceil(samples * epochs / batchSize) steps).")
    checkpoint_every: int = _f(50, "Write a resumable checkpoint every this many steps (and after the last).")
    finetune: str = _f(
        "lora",
        "'lora': a peft LoRA adapter on the base (the RL trainer and the policy server load it as they load an RL "
        "checkpoint); 'full': every weight is trained (use the result as the RL run's base).",
    )
    lora_rank: int = _f(8, "LoRA rank r (must equal the RL trainer's loraRank to start RL from this adapter).")
    lora_alpha: float = _f(16, "LoRA alpha (scaling = alpha / rank; must equal the RL trainer's loraAlpha).")
    max_tokens: int = _f(
        12000,
        "Samples whose rendering (cut after the last assistant token) is longer than this are skipped and counted.",
    )
    seed: int = _f(0, "Seed of the LoRA init and of each epoch's sample order.")
    warmup_ratio: float = _f(0.1, "Share of the steps with a linear learning-rate warmup, in [0, 1).")
    schedule: str = _f("cosine", "Learning rate after the warmup: 'cosine' decay towards 0, or 'constant'.")
    max_grad_norm: float = _f(1.0, "Gradient clipping by global L2 norm.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range checks; the message names the wire field (`sft.<camelCase>`) and the value."""

        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"{_camel(name)} is {getattr(self, name)!r}, expected {why}")

        need(self.lr > 0, "lr", "a number > 0")
        need(self.epochs >= 1, "epochs", "an integer >= 1")
        need(self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(self.max_steps >= 0, "max_steps", "an integer >= 0")
        need(self.checkpoint_every >= 1, "checkpoint_every", "an integer >= 1")
        need(self.finetune in FINETUNE_MODES, "finetune", " or ".join(repr(m) for m in FINETUNE_MODES))
        need(self.lora_rank >= 1, "lora_rank", "an integer >= 1")
        need(self.lora_alpha > 0, "lora_alpha", "a number > 0")
        need(self.max_tokens >= 1, "max_tokens", "an integer >= 1")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "a number in [0, 1)")
        need(self.schedule in LR_SCHEDULES, "schedule", " or ".join(repr(m) for m in LR_SCHEDULES))
        need(self.max_grad_norm > 0, "max_grad_norm", "a number > 0")

    def replace(self, **changes: Any) -> "SftConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Every field in its wire name (camelCase): what a checkpoint records as its `sft`."""
        return {_camel(k): v for k, v in dataclasses.asdict(self).items()}


# Wire name (request.sft) -> SftConfig field: every field.
SFT_WIRE_FIELDS: dict[str, str] = {_camel(f.name): f.name for f in dataclasses.fields(SftConfig)}
SFT_INT_FIELDS = frozenset({"epochs", "batch_size", "max_steps", "checkpoint_every", "lora_rank", "max_tokens", "seed"})
SFT_STR_FIELDS = frozenset({"finetune", "schedule"})
