"""The policy update, top to bottom: log-probs, clipped policy-gradient loss, KL to the reference, aggregation,
and the optimizer loop that applies them to a batch (CM2 / verl settings, docs/cm2-reference.md §5.8).

Advantages arrive already computed by the orchestrator, one per assistant message (Dr.GRPO / CM2 final
config: A = R - mean(group R), no division by the group std). Nothing here normalises them again.

For every loss token t (loss mask 1) with advantage A:

    ratio  = exp(logp - old_logp)                  old_logp: the policy before this update's first step
    pg     = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))     PPO clipped surrogate
    pg     = min(pg, -A * clip_ratio_c)   if A < 0                               dual clip
    kl     = exp(ref - logp) - (ref - logp) - 1    "low_var_kl" (k3), ref - logp clamped to ±20, kl to ±10
    loss   = token-mean(pg) + kl_coef * token-mean(kl)      means over all loss tokens of the mini-batch

The reference model is the base model with the adapter switched off (peft `disable_adapter()`), so it
costs no extra memory. With one mini-batch (the CM2 default) old_logp is the current log-prob detached:
the ratio is 1 and the update is exactly on-policy; with several mini-batches old_logp comes from one
no-grad pass before the first optimizer step and the clipping bounds how far later steps move.
Optional truncated importance sampling (`rollout_is_cap`) reweights tokens whose serving-stack log-probs
are known: w = min(exp(old_logp - rollout_logp), cap), detached.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import TrainerConfig
from .render import RenderedSample

Heartbeat = Callable[[dict[str, Any]], None]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the update is abandoned before the optimizer step."""


# 1. Per-token log-probs ------------------------------------------------------------------------------------
def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t = start+1 .. L-1, shape [B, L-start-1], float32.

    Only the logits from position `start` on are computed (`logits_to_keep`): the prompt before the first
    loss token needs hidden states but no vocabulary projection.
    """
    seq_len = input_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                logits_to_keep=seq_len - start)
    logits = out.logits[:, :-1, :].float()  # position p predicts token p+1
    targets = input_ids[:, start + 1:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# 2. Token-level policy-gradient loss (PPO clip + dual clip) ----------------------------------------------
def pg_loss_per_token(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      cfg: TrainerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss and a bool tensor of tokens where clipping changed the loss."""
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    dual = torch.minimum(loss, -advantages * cfg.clip_ratio_c)
    loss = torch.where(advantages < 0, dual, loss)
    was_clipped = (clipped > unclipped) | ((advantages < 0) & (dual < torch.maximum(unclipped, clipped)))
    return loss, was_clipped


# 3. Low-variance KL (k3) to the reference model -----------------------------------------------------------
def k3_kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_ratio = torch.clamp(ref_logp - logp, -20.0, 20.0)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    return torch.clamp(kl, -10.0, 10.0)


# 3b. Truncated importance weights against the serving stack's log-probs (optional) ----------------------
def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, known: torch.Tensor,
                       cap: float) -> torch.Tensor:
    w = torch.exp(torch.clamp(old_logp - rollout_logp, -20.0, 20.0)).clamp(max=cap)
    return torch.where(known, w, torch.ones_like(w)).detach()


# 4. Batching -------------------------------------------------------------------------------------------------
@dataclass
class MicroBatch:
    """Right-padded samples; the *_t tensors cover target positions start+1 .. L-1."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: int
    mask_t: torch.Tensor
    adv_t: torch.Tensor
    rollout_t: torch.Tensor
    rollout_known_t: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return int(self.mask_t.sum().item())


def make_micro_batch(samples: list[RenderedSample], pad_id: int, device: torch.device) -> MicroBatch:
    L = max(len(s.input_ids) for s in samples)
    B = len(samples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.float32)
    adv = torch.zeros((B, L), dtype=torch.float32)
    rlp = torch.zeros((B, L), dtype=torch.float32)
    known = torch.zeros((B, L), dtype=torch.bool)
    for b, s in enumerate(samples):
        n = len(s.input_ids)
        ids[b, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        att[b, :n] = 1
        mask[b, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        adv[b, :n] = torch.tensor(s.advantages, dtype=torch.float32)
        for k, lp in enumerate(s.rollout_logprobs):
            if lp is not None:
                rlp[b, k] = lp
                known[b, k] = True
    mask[:, 0] = 0.0  # the first token has no prediction
    first = [next(k for k, m in enumerate(s.loss_mask) if m) for s in samples]
    start = max(min(first) - 1, 0)
    sl = slice(start + 1, L)
    return MicroBatch(ids.to(device), att.to(device), start, mask[:, sl].to(device), adv[:, sl].to(device),
                      rlp[:, sl].to(device), known[:, sl].to(device))


def plan_batches(samples: list[RenderedSample], cfg: TrainerConfig, seed: int, pad_id: int,
                 device: torch.device) -> list[list[MicroBatch]]:
    """Seeded shuffle, split into mini-batches (one optimizer step each), then length-sorted micro-batches."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_mini = min(cfg.mini_batches, len(samples))
    minis = [order[k::n_mini] for k in range(n_mini)]
    plan = []
    for idx in minis:
        idx = sorted(idx, key=lambda k: len(samples[k].input_ids))
        plan.append([make_micro_batch([samples[k] for k in idx[j:j + cfg.micro_batch_size]], pad_id, device)
                     for j in range(0, len(idx), cfg.micro_batch_size)])
    return plan


# 5. The update ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _no_grad_logprobs(model: Any, mb: MicroBatch) -> torch.Tensor:
    return token_logprobs(model, mb.input_ids, mb.attention_mask, mb.start)


def apply_update(model: Any, optimizer: torch.optim.Optimizer, samples: list[RenderedSample],
                 cfg: TrainerConfig, *, seed: int, pad_id: int, device: torch.device,
                 heartbeat: Heartbeat | None = None) -> dict[str, Any]:
    """One policy update over the batch: `mini_batches` optimizer steps. Returns the metrics.

    `model` is a peft model whose trainable parameters are the adapter; `optimizer` holds exactly those.
    """
    t0 = time.perf_counter()
    beat = heartbeat or (lambda _p: None)
    plan = plan_batches(samples, cfg, seed, pad_id, device)
    micro = [mb for mini in plan for mb in mini]
    params = [p for p in model.parameters() if p.requires_grad]

    model.eval()  # no-grad passes: reference (adapter off) and, with several mini-batches, old log-probs
    if cfg.kl_coef > 0:
        with model.disable_adapter():
            for k, mb in enumerate(micro):
                mb.ref_logp = _no_grad_logprobs(model, mb)
                beat({"phase": "reference", "micro_batch": k + 1, "of": len(micro)})
    if len(plan) > 1:
        for k, mb in enumerate(micro):
            mb.old_logp = _no_grad_logprobs(model, mb)
            beat({"phase": "old_logprobs", "micro_batch": k + 1, "of": len(micro)})

    model.train()
    pg_sum = kl_sum = 0.0
    clipped = tokens = 0
    grad_norms: list[float] = []
    steps = skipped = 0
    for step, mini in enumerate(plan):
        n_tok = sum(mb.tokens for mb in mini)
        optimizer.zero_grad(set_to_none=True)
        for k, mb in enumerate(mini):
            logp = token_logprobs(model, mb.input_ids, mb.attention_mask, mb.start)
            old = mb.old_logp if mb.old_logp is not None else logp.detach()
            pg, was_clipped = pg_loss_per_token(logp, old, mb.adv_t, cfg)
            if cfg.rollout_is_cap is not None:
                pg = pg * rollout_is_weights(old, mb.rollout_t, mb.rollout_known_t, cfg.rollout_is_cap)
            kl = k3_kl_per_token(logp, mb.ref_logp) if mb.ref_logp is not None else torch.zeros_like(logp)
            # token-mean over the mini-batch: each micro-batch adds its masked sum / the mini-batch's count
            loss = ((pg + cfg.kl_coef * kl) * mb.mask_t).sum() / max(n_tok, 1)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"Loss is {loss.item()} at mini-batch {step}, micro-batch {k}")
            loss.backward()
            pg_sum += float((pg.detach() * mb.mask_t).sum())
            kl_sum += float((kl.detach() * mb.mask_t).sum())
            clipped += int((was_clipped & (mb.mask_t > 0)).sum())
            tokens += mb.tokens
            beat({"phase": "train", "mini_batch": step + 1, "of": len(plan), "micro_batch": k + 1})
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not math.isfinite(norm):
            raise TrainingDiverged(f"Gradient norm is {norm} at mini-batch {step}")
        grad_norms.append(norm)
        if norm == 0.0:
            skipped += 1  # no signal: skip, so that weight decay alone does not move the adapter
        else:
            optimizer.step()
            steps += 1
    optimizer.zero_grad(set_to_none=True)
    model.eval()

    denom = max(tokens, 1)
    pg_mean, kl_mean = pg_sum / denom, kl_sum / denom
    return {
        "loss": pg_mean + cfg.kl_coef * kl_mean,
        "pg_loss": pg_mean,
        "kl": kl_mean,
        "clip_frac": clipped / denom,
        "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "optimizer_steps": steps,
        "skipped_steps": skipped,
        "samples": len(samples),
    }
