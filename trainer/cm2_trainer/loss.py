"""The policy update, top to bottom: log-probs, clipped policy-gradient loss, KL to the reference, aggregation,
and the optimizer loop that applies them to a batch (CM2 / verl settings, docs/cm2-reference.md §5.8).

Advantages arrive already computed by the orchestrator, one per assistant message (Dr.GRPO / CM2 final
config: A = R - mean(group R), no division by the group std). Nothing here normalises them again.

For every loss token t (loss mask 1) with advantage A:

    ratio  = exp(logp - old_logp)                  old_logp: the policy before this update's first step
    pg     = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))     PPO clipped surrogate
    pg     = min(pg, -A * clip_ratio_c)   if A < 0                               dual clip
    kl     = exp(ref - logp) - (ref - logp) - 1    "low_var_kl" (k3), ref - logp clamped to ±20, kl to ±10
    w      = min(exp(old_logp - rollout_logp), cap)        rollout correction, detached; 1 without serving
                                                           log-probs; 0 on every token of a vetoed trajectory
    loss   = Σ_t a_t (w_t pg_t + kl_coef v_t kl_t)          v_t = 0 on a vetoed trajectory's tokens, else 1

The aggregation weights a_t (`loss_agg`) sum to 1 over a mini-batch:
    token-mean            a_t = 1 / (loss tokens of the mini-batch)
    seq-mean-token-mean   a_t = 1 / (trajectories of the mini-batch × loss tokens of t's trajectory)
The second is what the released CM2 run optimises: verl's token-mean per micro-batch, with one trajectory per
micro-batch and each micro-batch scaled by 1 / micro-batches. Both are computed per token from the whole
mini-batch, so micro-batching and packing change nothing (tested).

The reference model is the base model with the adapter switched off (peft `disable_adapter()`), so it
costs no extra memory; a run started from an SFT checkpoint passes its own `reference` (the frozen SFT adapter,
update.py). With one mini-batch (the CM2 default) old_logp is the current log-prob detached:
the ratio is 1 and the update is exactly on-policy; with several mini-batches old_logp comes from one
no-grad pass before the first optimizer step and the clipping bounds how far later steps move.
Rollout correction (`rollout_is_cap`, `rollout_is_veto`) reweights the tokens whose serving-stack log-probs
are known, and drops a trajectory in which any such token's weight is below the veto threshold: the serving
engine sampled a token the trainer's policy all but rules out, so the sample is off-policy beyond repair.
A vetoed trajectory still counts in the denominators, so the veto rate does not rescale the others.

A GRPO group's samples start with the same prompt (system, tool schemas, user turn: ~2.8k tokens in the
demo), so samples whose tokens up to their first loss token are identical are packed into one row: the
prompt once, then each continuation, which attends to the prompt and to itself (4-D mask, positions
restarting after the prompt). The log-probs and gradients are those of separate rows (tested); the prompt's
forward and backward run once per group instead of once per sample.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .config import TrainerConfig
from .render import RenderedSample

Heartbeat = Callable[[dict[str, Any]], None]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the update is abandoned before the optimizer step."""


# 1. Per-token log-probs ------------------------------------------------------------------------------------
def token_logprobs(model: Any, mb: "MicroBatch", entropy: list[float] | None = None) -> torch.Tensor:
    """log p(target_k | its context) for every loss token k of the micro-batch, shape [N], float32 (float64 for
    a float64 model: the equality tests run there, where two orders of summation agree to ~1e-15).

    The vocabulary projection runs only at the positions that predict a loss token (`logits_to_keep` with
    an index tensor): prompts and tool results need hidden states but no logits, and one [N, vocab] block is
    all the memory the head needs. With ``entropy`` (a list), the summed entropy of the policy's next-token
    distribution at those positions (no gradient) is appended to it: a diagnostic of exploration.
    """
    out = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        use_cache=False,
        logits_to_keep=mb.keep,
    )
    logits = out.logits[mb.row, mb.col]  # [N, vocab]
    if logits.dtype != torch.float64:
        logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    if entropy is not None:
        with torch.no_grad():
            p = torch.softmax(logits.detach(), dim=-1)
            entropy.append(float((lse.detach() - (p * logits.detach()).sum(-1)).sum()))
    return logits.gather(-1, mb.target.unsqueeze(-1)).squeeze(-1) - lse


# 2. Token-level policy-gradient loss (PPO clip + dual clip) ----------------------------------------------
def pg_loss_per_token(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, cfg: TrainerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
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


# 3b. Rollout correction: truncated importance weights against the serving stack's log-probs, and the veto --
def rollout_correction(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    known: torch.Tensor,
    seq: torch.Tensor,
    n_seqs: int,
    cap: float,
    veto: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token weight, detached; per-trajectory bool: vetoed). Unknown tokens weigh 1 and never veto."""
    raw = torch.exp(torch.clamp(old_logp - rollout_logp, -20.0, 20.0))
    w = torch.where(known, raw.clamp(max=cap), torch.ones_like(raw))
    vetoed = torch.zeros(n_seqs, dtype=torch.bool, device=w.device)
    if veto > 0:
        vetoed[seq[known & (raw < veto)]] = True
    return w.detach(), vetoed


# 4. Batching -------------------------------------------------------------------------------------------------
@dataclass
class MicroBatch:
    """One forward pass, and its loss tokens as flat [N] tensors.

    Rows are right-padded samples (2-D attention mask), or one packed row: a prompt shared by several samples
    followed by each sample's continuation, which sees the prompt and itself only (4-D mask, position ids
    restarting after the prompt). Loss token k is `target[k]`, predicted at position `keep[col[k]]` of row
    `row[k]`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    keep: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    target: torch.Tensor
    adv: torch.Tensor
    rollout: torch.Tensor
    rollout_known: torch.Tensor
    seq: torch.Tensor  # per loss token: index of its sample in this micro-batch
    seq_tokens: torch.Tensor  # per sample of this micro-batch: its loss tokens
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    loss_at: list[list[int]] = field(default_factory=list)  # per sample: its loss tokens' positions in input_ids
    index: list[int] = field(default_factory=list)  # per sample: its index in the update's samples (plan_batches)

    @property
    def tokens(self) -> int:
        return int(self.target.numel())

    @property
    def seqs(self) -> int:
        return int(self.seq_tokens.numel())


def _loss_tokens(s: RenderedSample) -> list[int]:
    return [t for t in range(1, len(s.input_ids)) if s.loss_mask[t]]  # the first token has no prediction


def _finish(
    ids: torch.Tensor,
    att: torch.Tensor,
    pos: torch.Tensor | None,
    preds: list[tuple[int, int, tuple[int, int]]],
    samples: list[RenderedSample],
    device: torch.device,
) -> MicroBatch:
    """preds: (row, predicting position, (sample index, token index)) per loss token, in sample order."""
    keep = sorted({p for _, p, _ in preds})
    col_of = {p: c for c, p in enumerate(keep)}
    adv, rlp, known, target, seq = [], [], [], [], []
    loss_at: list[list[int]] = [[] for _ in samples]
    for _, _, (i, t) in preds:
        seq.append(i)
        loss_at[i].append(t)
        s = samples[i]
        target.append(s.input_ids[t])
        adv.append(s.advantages[t])
        lp = s.rollout_logprobs[t]
        rlp.append(lp if lp is not None else 0.0)
        known.append(lp is not None)

    def tensor(v: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(v, dtype=dtype, device=device)

    return MicroBatch(
        ids.to(device),
        att.to(device),
        pos.to(device) if pos is not None else None,
        tensor(keep, torch.long),
        tensor([r for r, _, _ in preds], torch.long),
        tensor([col_of[p] for _, p, _ in preds], torch.long),
        tensor(target, torch.long),
        tensor(adv, torch.float32),
        tensor(rlp, torch.float32),
        tensor(known, torch.bool),
        tensor(seq, torch.long),
        tensor([len(at) for at in loss_at], torch.long),
        loss_at=loss_at,
        index=list(range(len(samples))),
    )


def make_micro_batch(samples: list[RenderedSample], pad_id: int, device: torch.device) -> MicroBatch:
    """Right-padded rows, one per sample."""
    L = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(samples), L), dtype=torch.long)
    preds = []
    for b, s in enumerate(samples):
        ids[b, : len(s.input_ids)] = torch.tensor(s.input_ids, dtype=torch.long)
        att[b, : len(s.input_ids)] = 1
        preds += [(b, t - 1, (b, t)) for t in _loss_tokens(s)]
    return _finish(ids, att, None, preds, samples, device)


def make_packed_batch(
    samples: list[RenderedSample], prompt_len: int, mask_dtype: torch.dtype | None, device: torch.device
) -> MicroBatch:
    """One row: the samples' common first `prompt_len` tokens once, then each sample's remaining tokens.

    Exactly the same log-probs as separate rows (same positions, each continuation attends to the prompt and
    to itself), while the prompt is read once. `mask_dtype` None gives a boolean mask (SDPA); a float dtype
    an additive one (eager attention).
    """
    head = samples[0].input_ids[:prompt_len]
    assert all(s.input_ids[:prompt_len] == head for s in samples), "samples do not share the prompt"
    ids, pos, seg = list(head), list(range(prompt_len)), [0] * prompt_len
    preds = []
    for i, s in enumerate(samples):
        offset = len(ids) - prompt_len  # packed position = original position + offset, after the prompt
        ids += s.input_ids[prompt_len:]
        pos += range(prompt_len, len(s.input_ids))
        seg += [i + 1] * (len(s.input_ids) - prompt_len)
        preds += [(0, t - 1 + (offset if t - 1 >= prompt_len else 0), (i, t)) for t in _loss_tokens(s)]
    seg_t = torch.tensor(seg)
    idx = torch.arange(len(ids))
    allowed = (idx[None, :] <= idx[:, None]) & ((seg_t[None, :] == 0) | (seg_t[None, :] == seg_t[:, None]))
    if mask_dtype is None:
        mask = allowed[None, None]
    else:
        mask = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill_(~allowed, torch.finfo(mask_dtype).min)
        mask = mask[None, None]
    return _finish(torch.tensor([ids]), mask, torch.tensor([pos]), preds, samples, device)


def _packing_mask_dtype(model: Any) -> tuple[bool, torch.dtype | None]:
    """(whether the model takes a custom 4-D mask, the mask dtype it wants)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "sdpa":
        return True, None
    if impl == "eager":
        return True, next(model.parameters()).dtype
    return False, None  # flash / flex kernels take no dense custom mask: no packing


def _prompt_groups(samples: list[RenderedSample], idx: list[int], max_tokens: int) -> list[tuple[list[int], int]]:
    """Split `idx` into (members, shared prompt length) packs: samples whose tokens up to their first loss
    token are identical share that prompt; a pack holds at most `max_tokens` tokens; singletons get 0."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for k in idx:
        s = samples[k]
        first = next(t for t, m in enumerate(s.loss_mask) if m)
        by_prompt.setdefault(tuple(s.input_ids[:first]), []).append(k)
    groups = []
    for prompt, members in by_prompt.items():
        p = len(prompt)
        pack: list[int] = []
        size = p
        for k in sorted(members, key=lambda k: len(samples[k].input_ids)):
            extra = len(samples[k].input_ids) - p
            if pack and size + extra > max_tokens:
                groups.append((pack, p if len(pack) > 1 else 0))
                pack, size = [], p
            pack.append(k)
            size += extra
        groups.append((pack, p if len(pack) > 1 else 0))
    return groups


def plan_batches(
    samples: list[RenderedSample], cfg: TrainerConfig, seed: int, pad_id: int, device: torch.device, model: Any = None
) -> list[list[MicroBatch]]:
    """Seeded shuffle, split into mini-batches (one optimizer step each), then micro-batches: samples that
    share a prompt are packed into one row (`pack_max_tokens`, when the model's attention takes a custom
    mask), the rest go into length-sorted right-padded micro-batches of `micro_batch_size`."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_mini = min(cfg.mini_batches, len(samples))
    minis = [order[k::n_mini] for k in range(n_mini)]
    can_pack, mask_dtype = _packing_mask_dtype(model) if model is not None else (False, None)
    plan = []
    for idx in minis:
        micro, single = [], []
        groups = (
            _prompt_groups(samples, idx, cfg.pack_max_tokens)
            if can_pack and cfg.pack_max_tokens > 0
            else [([k], 0) for k in idx]
        )
        for members, prompt_len in groups:
            if prompt_len:
                mb = make_packed_batch([samples[k] for k in members], prompt_len, mask_dtype, device)
                mb.index = members
                micro.append(mb)
            else:
                single += members
        single.sort(key=lambda k: len(samples[k].input_ids))
        for j in range(0, len(single), cfg.micro_batch_size):
            mb = make_micro_batch([samples[k] for k in single[j : j + cfg.micro_batch_size]], pad_id, device)
            mb.index = single[j : j + cfg.micro_batch_size]
            micro.append(mb)
        plan.append(micro)
    return plan


def aggregation_weights(mb: MicroBatch, mode: str, n_tok: int, n_seq: int) -> torch.Tensor:
    """a_t of the module doc for the loss tokens of one micro-batch, given its mini-batch's token and
    trajectory counts."""
    if mode == "token-mean":
        return torch.full((mb.tokens,), 1.0 / max(n_tok, 1), device=mb.target.device)
    if mode == "seq-mean-token-mean":
        return 1.0 / (max(n_seq, 1) * mb.seq_tokens[mb.seq].double()).to(mb.target.device)
    raise ValueError(f"loss_agg is {mode!r}, expected 'token-mean' or 'seq-mean-token-mean'")


# 5. The per-token record -------------------------------------------------------------------------------------
@dataclass
class TokenStats:
    """One sample's loss tokens, in token order, as the update used them."""

    positions: list[int]  # in the sample's input_ids
    token_ids: list[int]
    advantages: list[float]
    rollout_logprobs: list[float | None]  # the serving stack's, where known
    old_logprobs: list[float]  # what the ratio is taken against: the policy before the first optimizer step
    is_weights: list[float] | None  # rollout correction's truncated weights (1 where unknown); None when off
    vetoed: bool | None  # rollout correction dropped the trajectory; None when off


class TokenLog:
    """Filled by `apply_update`: the old log-prob and the importance weight of every loss token, one small CPU
    tensor per micro-batch (one device-to-host copy each); `stats(k)` reads sample k of `samples` back."""

    def __init__(self, samples: list[RenderedSample]) -> None:
        self.samples = samples
        self._rows: dict[int, tuple[list[int], torch.Tensor]] = {}

    def add(self, mb: MicroBatch, old: torch.Tensor, w: torch.Tensor | None, vetoed: torch.Tensor | None) -> None:
        old = old.detach()
        cols = [old] if w is None or vetoed is None else [old, w.to(old.dtype), vetoed[mb.seq].to(old.dtype)]
        rows = torch.stack(cols).cpu()
        start = 0
        for k, at in zip(mb.index, mb.loss_at, strict=True):
            self._rows[k] = (at, rows[:, start : start + len(at)])
            start += len(at)

    def stats(self, k: int) -> TokenStats | None:
        """Sample k's record; None if the update did not see it."""
        if k not in self._rows:
            return None
        at, rows = self._rows[k]
        s = self.samples[k]
        values = rows.tolist()
        return TokenStats(
            at,
            [s.input_ids[t] for t in at],
            [s.advantages[t] for t in at],
            [s.rollout_logprobs[t] for t in at],
            values[0],
            values[1] if len(values) > 1 else None,
            any(v > 0 for v in values[2]) if len(values) > 1 else None,
        )


# 6. The update ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _no_grad_logprobs(model: Any, mb: MicroBatch) -> torch.Tensor:
    return token_logprobs(model, mb)


def apply_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    samples: list[RenderedSample],
    cfg: TrainerConfig,
    *,
    seed: int,
    pad_id: int,
    device: torch.device,
    heartbeat: Heartbeat | None = None,
    reference: Callable[[], AbstractContextManager[Any]] | None = None,
    token_log: TokenLog | None = None,
) -> dict[str, Any]:
    """One policy update over the batch: `mini_batches` optimizer steps. Returns the metrics.

    `model` is a peft model whose trainable parameters are the adapter; `optimizer` holds exactly those.
    `reference()` is the context in which the model computes the KL reference (default: the adapter off).
    `token_log` (of these `samples`), when given, receives every loss token's old log-prob and weights.
    """
    t0 = time.perf_counter()
    beat = heartbeat or (lambda _p: None)
    if token_log is not None and token_log.samples is not samples:
        raise ValueError("token_log records other samples than the ones this update trains on")
    plan = plan_batches(samples, cfg, seed, pad_id, device, model)
    micro = [mb for mini in plan for mb in mini]
    params = [p for p in model.parameters() if p.requires_grad]

    model.eval()  # no-grad passes: reference (adapter off) and, with several mini-batches, old log-probs
    if cfg.kl_coef > 0:
        with (reference or model.disable_adapter)():
            for k, mb in enumerate(micro):
                mb.ref_logp = _no_grad_logprobs(model, mb)
                beat({"phase": "reference", "micro_batch": k + 1, "of": len(micro)})
    if len(plan) > 1:
        for k, mb in enumerate(micro):
            mb.old_logp = _no_grad_logprobs(model, mb)
            beat({"phase": "old_logprobs", "micro_batch": k + 1, "of": len(micro)})

    model.train()
    pg_sum = kl_sum = 0.0
    entropy_sums: list[float] = []
    clipped = tokens = 0
    grad_norms: list[float] = []
    steps = skipped = 0
    is_weight_sum, is_known, vetoed_seqs, seqs = 0.0, 0, 0, 0
    for step, mini in enumerate(plan):
        n_tok = sum(mb.tokens for mb in mini)
        n_seq = sum(int((mb.seq_tokens > 0).sum()) for mb in mini)
        optimizer.zero_grad(set_to_none=True)
        for k, mb in enumerate(mini):
            logp = token_logprobs(model, mb, entropy_sums)
            old = mb.old_logp if mb.old_logp is not None else logp.detach()
            pg, was_clipped = pg_loss_per_token(logp, old, mb.adv, cfg)
            keep = torch.ones_like(pg)
            w: torch.Tensor | None = None
            vetoed: torch.Tensor | None = None
            if cfg.rollout_is_cap is not None:
                w, vetoed = rollout_correction(
                    old, mb.rollout, mb.rollout_known, mb.seq, mb.seqs, cfg.rollout_is_cap, cfg.rollout_is_veto
                )
                pg = pg * w
                keep = (~vetoed[mb.seq]).to(pg.dtype)
                is_weight_sum += float(w[mb.rollout_known].sum())
                is_known += int(mb.rollout_known.sum())
                vetoed_seqs += int(vetoed.sum())
            if token_log is not None:
                token_log.add(mb, old, w, vetoed)
            seqs += mb.seqs
            kl = k3_kl_per_token(logp, mb.ref_logp) if mb.ref_logp is not None else torch.zeros_like(logp)
            agg = aggregation_weights(mb, cfg.loss_agg, n_tok, n_seq).to(pg.dtype) * keep
            loss = ((pg + cfg.kl_coef * kl) * agg).sum()
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"Loss is {loss.item()} at mini-batch {step}, micro-batch {k}")
            loss.backward()
            pg_sum += float((pg.detach() * agg).sum())
            kl_sum += float((kl.detach() * agg).sum())
            clipped += int(was_clipped.sum())
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

    # per mini-batch the aggregation weights sum to 1: the means over mini-batches are the objective's values
    pg_mean, kl_mean = pg_sum / max(len(plan), 1), kl_sum / max(len(plan), 1)
    return {
        "loss": pg_mean + cfg.kl_coef * kl_mean,
        "pg_loss": pg_mean,
        "kl": kl_mean,
        "clip_frac": clipped / max(tokens, 1),
        "entropy": sum(entropy_sums) / max(tokens, 1),
        "is_mean_weight": is_weight_sum / is_known if is_known else None,
        "is_vetoed_share": vetoed_seqs / seqs if is_known and seqs else None,
        "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "optimizer_steps": steps,
        "skipped_steps": skipped,
        "samples": len(samples),
    }
