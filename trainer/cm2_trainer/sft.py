"""`sft_train`: cold-start supervised fine-tuning on a stored dataset's reference trajectories, resumable.

Samples. Each record of the training dataset (a `cm2.dataset/v1` manifest, store/datasets.ts) becomes one
sample in which every assistant message is trained with advantage 1.0 (`contract.decode_record`), rendered
by `render.render_sample` exactly as an RL update renders a transcript: the same tools, the same serving chat
template, the same loss mask (assistant tokens up to their end-of-turn token; everything else is context). A
record whose rendering (cut after its last assistant token) has more than `maxTokens` tokens is skipped
(`skipped.tooLong`), one with no assistant token too (`skipped.noLossToken`). The loss of an optimizer step
is the mean negative log-likelihood over the loss tokens of its samples (token mean).

Order. The samples of epoch e are a permutation seeded by (seed, e); the epochs are concatenated and step k
(0-based) trains positions [k * batchSize, (k + 1) * batchSize) of that sequence (the last step may be
short). Steps: min(maxSteps or infinity, ceil(samples * epochs / batchSize)). Checkpoint `step-<k>` and the
heartbeat's `step` count finished steps (1-based).

Learning rate. AdamW (the worker's betas, eps and weight decay). Optimizer step s (0-based) runs at
lr * (s + 1) / W during the W = ceil(warmupRatio * steps) warmup steps, so the first step is not wasted at 0,
then at lr ('constant') or lr * (1 + cos(pi * (s - W) / (steps - W))) / 2 ('cosine').

Weights. finetune 'lora': a peft LoRA adapter (the worker's target modules) on the base, which stays frozen and
cached for the RL updates. 'full': every weight of a private copy of the base. On a GPU the full fine-tune
keeps float32 weights and optimizer state and computes in bfloat16 (autocast): updates of lr ~1e-5 are below
bfloat16's resolution (2^-8 relative) and would round away in bfloat16 weights.

Checkpoints: every `checkpointEvery` steps and after the last, a manifest blob

    { schema: "cm2.sft-checkpoint/v1", runId, step, steps, base, dataset, heldOut, finetune,
      files: { name: Ref }, metrics: { loss, heldOutLoss }, sft, skipped, createdAt }

named `sft/<runId>/step-<step>` with create-if-absent (first writer wins). `files`: for LoRA the adapter as an
RL checkpoint has it (`adapter_config.json`, `adapter_model.safetensors`: the policy server and the RL
trainer's `init` load it like any adapter), for a full fine-tune the `save_pretrained` files of the model and
its tokenizer (a complete HF model directory); both add `optimizer.pt` (AdamW state) and `trainer_state.pt`
(step, scheduler state, RNG states). `metrics.loss` is the mean step loss since the previous checkpoint,
`metrics.heldOutLoss` the token-mean NLL over the held-out records (null without them), `sft` the resolved
config (camelCase), `skipped` the training records skipped. After the last checkpoint `sft/<runId>/final`
names it (create-if-absent).

Resume. If `sft/<runId>/final` exists the run is done: its result comes back with `reused: true` and nothing is
trained. Otherwise the highest `sft/<runId>/step-<k>` is loaded (weights, optimizer, scheduler, RNG) and
training continues with step k + 1: the data order is a function of (seed, epoch) and the learning rate of the
step, so a run killed and resumed reaches the weights of an uninterrupted run (tested). A checkpoint of the
same runId trained on another base, dataset or config is a `ContractError`: a run id names one run.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from .config import SftConfig, TrainerConfig
from .contract import (
    SFT_CHECKPOINT_SCHEMA,
    BaseModel,
    ContractError,
    SftRequest,
    decode_dataset_manifest,
    decode_record,
    decode_sft_manifest,
    wire_name,
)
from .loss import Heartbeat, TrainingDiverged, make_micro_batch, token_logprobs
from .render import RenderedSample, TemplateError, render_sample
from .store import ArtifactStore, Ref, StoreCorruption, open_store
from .update import (
    ADAPTER_FILES,
    OPTIMIZER_FILE,
    ModelCache,
    copy_adapter,
    file_ref,
    load_base,
    load_checkpoint_manifest,
    lora_config,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger("cm2_trainer.sft")

TRAINER_STATE_FILE = "trainer_state.pt"
_STATE_FILES = (OPTIMIZER_FILE, TRAINER_STATE_FILE)


def sft_checkpoint_name(run_id: str, step: int | str) -> str:
    return wire_name("storeNames", "sftCheckpoint", run=run_id, step=step)


def sft_final_name(run_id: str) -> str:
    return wire_name("storeNames", "sftFinal", run=run_id)


@dataclass(frozen=True)
class SftResult:
    run_id: str
    steps: int
    checkpoint: Ref  # the final checkpoint manifest
    reused: bool
    history: list[dict[str, Any]]  # one {step, loss, heldOutLoss} per checkpoint, by step
    skipped: dict[str, int]  # training records skipped: tooLong, noLossToken

    def to_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "steps": self.steps,
            "checkpoint": self.checkpoint.to_json(),
            "reused": self.reused,
            "history": self.history,
            "skipped": self.skipped,
        }


@dataclass
class _Data:
    train: list[RenderedSample]
    held_out: list[RenderedSample]
    skipped: dict[str, int]


@dataclass(frozen=True)
class _Resume:
    ref: Ref
    manifest: dict[str, Any]


@dataclass
class _Session:
    """What the training loop needs besides the model: where it writes, and how it computes."""

    req: SftRequest
    cfg: SftConfig
    rt: TrainerConfig  # the worker's config: micro-batch size, AdamW betas/eps/weight decay, target modules
    store: ArtifactStore
    device: torch.device
    compute: Callable[[], AbstractContextManager[Any]]  # autocast for a full fine-tune on GPU, else nothing
    pad_id: int
    tokenizer: Any
    tmp: Path


# -- the activity body ------------------------------------------------------------------------------------------
def sft_train(
    req: SftRequest,
    *,
    heartbeat: Heartbeat | None = None,
    cache: ModelCache | None = None,
    defaults: TrainerConfig | None = None,
) -> SftResult:
    beat = heartbeat or (lambda _p: None)
    store = open_store(req.store_url)
    cfg = req.config()
    rt = defaults or TrainerConfig()

    final = store.get_name(sft_final_name(req.run_id))
    if final is not None:
        _same_run(_load_sft_manifest(store, final, sft_final_name(req.run_id)), req, cfg, sft_final_name(req.run_id))
        return _result(store, req.run_id, final, reused=True)
    resume = _resume_point(store, req, cfg)
    if resume is not None and resume.manifest["step"] == resume.manifest["steps"]:
        return _finish(store, req.run_id, resume.ref)  # trained to the end; only the final pointer was missing

    device = resolve_device(rt)
    dtype = resolve_dtype(rt, device)
    cache = cache or ModelCache()
    beat({"phase": "load"})
    with cache.lock, tempfile.TemporaryDirectory(prefix="cm2-sft-") as tmp:
        if cfg.finetune == "lora":
            last = _train_lora(req, cfg, rt, store, cache, device, dtype, resume, Path(tmp), beat)
        else:
            cache.clear()  # a full fine-tune trains its own copy; free the cached base for it
            last = _train_full(req, cfg, rt, store, device, dtype, resume, Path(tmp), beat)
    return _finish(store, req.run_id, last)


def _train_lora(
    req: SftRequest,
    cfg: SftConfig,
    rt: TrainerConfig,
    store: ArtifactStore,
    cache: ModelCache,
    device: torch.device,
    dtype: torch.dtype,
    resume: _Resume | None,
    tmp: Path,
    beat: Heartbeat,
) -> Ref:
    from peft import PeftModel, get_peft_model

    base_model, tokenizer, chat_template = cache.get(req.base, device, dtype)
    data = _load_data(store, req, cfg, tokenizer, chat_template, _vocab(base_model))
    model = None
    try:
        torch.manual_seed(cfg.seed)  # the LoRA init
        if resume is None:
            model = get_peft_model(base_model, lora_config(cfg.lora_rank, cfg.lora_alpha, rt))
        else:
            adapter = copy_adapter(store, resume.manifest, tmp / "resume")
            model = PeftModel.from_pretrained(base_model, str(adapter), is_trainable=True)
        if rt.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        session = _Session(req, cfg, rt, store, device, nullcontext, _pad_id(tokenizer), tokenizer, tmp)
        return _train(model, data, session, resume, beat)
    except BaseException:
        cache.clear()  # never reuse a half-wrapped base
        raise
    finally:
        if model is not None and cache._value is not None:
            model.unload()  # remove the LoRA layers; the cached base is the plain model again


def _train_full(
    req: SftRequest,
    cfg: SftConfig,
    rt: TrainerConfig,
    store: ArtifactStore,
    device: torch.device,
    dtype: torch.dtype,
    resume: _Resume | None,
    tmp: Path,
    beat: Heartbeat,
) -> Ref:
    weights = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    model, tokenizer, chat_template = _load_full(req.base, device, weights, store, resume, tmp)
    for p in model.parameters():
        p.requires_grad_(True)
    if rt.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    data = _load_data(store, req, cfg, tokenizer, chat_template, _vocab(model))

    def compute() -> AbstractContextManager[Any]:
        if weights == dtype:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    session = _Session(req, cfg, rt, store, device, compute, _pad_id(tokenizer), tokenizer, tmp)
    return _train(model, data, session, resume, beat)


def _load_full(
    base: BaseModel, device: torch.device, dtype: torch.dtype, store: ArtifactStore, resume: _Resume | None, tmp: Path
) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, serving chat template): the base, or the resumed checkpoint's weights."""
    if resume is None:
        return load_base(base, device, dtype)  # not the cache's: every weight of this copy changes
    from transformers import AutoModelForCausalLM

    from .chat import serving_chat_template
    from .models import load_tokenizer

    d = tmp / "resume"
    d.mkdir(parents=True)
    for fname in resume.manifest["files"]:
        if fname not in _STATE_FILES:
            store.copy_to(file_ref(resume.manifest, fname, "SFT checkpoint"), d / fname)
    tokenizer = load_tokenizer(base.path)  # the base's, as a fresh run (the checkpoint's copy is for serving)
    model: Any = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    model.to(device)
    return model, tokenizer, serving_chat_template(tokenizer)


def _vocab(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


# -- data ---------------------------------------------------------------------------------------------------------
def _load_data(
    store: ArtifactStore,
    req: SftRequest,
    cfg: SftConfig,
    tokenizer: Any,
    chat_template: str | None,
    vocab: int,
) -> _Data:
    train, skipped, name = render_dataset(store, req.dataset, "request.dataset", tokenizer, chat_template, vocab, cfg)
    if not train:
        n = skipped["tooLong"] + skipped["noLossToken"]
        raise ContractError(
            f"Dataset {name!r} ({req.dataset.uri}) has no usable sample: of its {n} records {skipped['tooLong']} "
            f"are longer than maxTokens {cfg.max_tokens} and {skipped['noLossToken']} have no assistant token"
        )
    held_out: list[RenderedSample] = []
    if req.held_out is not None:
        held_out, held_skipped, held_name = render_dataset(
            store, req.held_out, "request.heldOut", tokenizer, chat_template, vocab, cfg
        )
        if not held_out:
            log.warning("Held-out dataset %r has no usable record (%s): no held-out loss", held_name, held_skipped)
    return _Data(train, held_out, skipped)


def render_dataset(
    store: ArtifactStore,
    ref: Ref,
    where: str,
    tokenizer: Any,
    chat_template: str | None,
    vocab: int,
    cfg: SftConfig,
) -> tuple[list[RenderedSample], dict[str, int], str]:
    """(usable samples in record order, skipped counts, the dataset's name)."""
    manifest = decode_dataset_manifest(store.get_json(ref), where)
    out: list[RenderedSample] = []
    skipped = {"tooLong": 0, "noLossToken": 0}
    for i, rec_ref in enumerate(manifest.records):
        rec_where = f"dataset {manifest.name!r} records[{i}]"
        sample = decode_record(store.get_json(rec_ref), rec_where)
        try:
            r = render_sample(sample, tokenizer, chat_template=chat_template, vocab_size=vocab)
        except TemplateError as e:
            raise ContractError(f"{rec_where} (uuid {sample.episode_id!r}): {e}") from None
        if r.num_loss_tokens == 0:
            skipped["noLossToken"] += 1
        elif len(r.input_ids) > cfg.max_tokens:
            skipped["tooLong"] += 1
        else:
            out.append(r)
    return out, skipped, manifest.name


def total_steps(n: int, cfg: SftConfig) -> int:
    steps = math.ceil(n * cfg.epochs / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps


@lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The sample order of one epoch: a permutation seeded by (seed, epoch) alone, so any step's samples are
    known without replaying the steps before it."""
    order = list(range(n))
    random.Random(f"cm2-sft/{seed}/{epoch}").shuffle(order)
    return tuple(order)


def step_samples(n: int, cfg: SftConfig, k: int) -> list[int]:
    """The sample indices of step k (0-based): positions [k * batchSize, (k + 1) * batchSize) of the epochs."""
    end = min((k + 1) * cfg.batch_size, n * cfg.epochs)
    return [epoch_order(n, cfg.seed, p // n)[p % n] for p in range(k * cfg.batch_size, end)]


def lr_factor(step: int, total: int, cfg: SftConfig) -> float:
    """The multiple of `lr` at optimizer step `step` (0-based); see the module doc."""
    warmup = math.ceil(cfg.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# -- training ---------------------------------------------------------------------------------------------------
def _train(model: Any, data: _Data, s: _Session, resume: _Resume | None, beat: Heartbeat) -> Ref:
    """Steps from the resume point (or 0) to the end, checkpointing as the module doc says; returns the ref of the
    last checkpoint."""
    total = total_steps(len(data.train), s.cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=s.cfg.lr, betas=(s.rt.betas[0], s.rt.betas[1]), eps=s.rt.eps, weight_decay=s.rt.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, s.cfg))
    start = _restore(optimizer, scheduler, s, resume, total) if resume is not None else 0
    last = resume.ref if resume is not None else None
    losses: list[float] = []
    for k in range(start, total):
        model.train()
        batch = [data.train[i] for i in step_samples(len(data.train), s.cfg, k)]
        loss = _step(model, optimizer, params, batch, s)
        scheduler.step()
        losses.append(loss)
        beat({"phase": "train", "step": k + 1, "of": total, "loss": loss})
        if (k + 1) % s.cfg.checkpoint_every == 0 or k + 1 == total:
            model.eval()
            held = None
            if data.held_out:
                beat({"phase": "heldout"})
                held = held_out_loss(model, data.held_out, s)
            beat({"phase": "save"})
            metrics = {"loss": sum(losses) / len(losses), "heldOutLoss": held}
            last = _checkpoint(model, optimizer, scheduler, s, k + 1, total, metrics, data.skipped)
            losses = []
    assert last is not None  # total >= 1 and the last step always checkpoints
    model.eval()
    return last


def _micro_batches(samples: list[RenderedSample], s: _Session) -> list[Any]:
    """Length-sorted micro-batches of the worker's `micro_batch_size` (memory only: the loss is a token mean over
    all of them)."""
    ordered = sorted(samples, key=lambda r: len(r.input_ids))
    size = s.rt.micro_batch_size
    return [make_micro_batch(ordered[j : j + size], s.pad_id, s.device) for j in range(0, len(ordered), size)]


def _step(
    model: Any, optimizer: torch.optim.Optimizer, params: list[Any], samples: list[RenderedSample], s: _Session
) -> float:
    """One optimizer step on the token-mean NLL of `samples`; returns that loss."""
    micro = _micro_batches(samples, s)
    n_tok = max(sum(mb.tokens for mb in micro), 1)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro:
        with s.compute():
            logp = token_logprobs(model, mb)
        loss = -logp.sum() / n_tok
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"SFT loss is {loss.item()} at a micro-batch of {len(samples)} samples")
        loss.backward()
        total += float(loss.detach())
    norm = float(torch.nn.utils.clip_grad_norm_(params, s.cfg.max_grad_norm))
    if not math.isfinite(norm):
        raise TrainingDiverged(f"SFT gradient norm is {norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def held_out_loss(model: Any, samples: list[RenderedSample], s: _Session) -> float:
    """Token-mean NLL over the loss tokens of all `samples` (their assistant tokens)."""
    nll, n = 0.0, 0
    for mb in _micro_batches(samples, s):
        with s.compute():
            logp = token_logprobs(model, mb)
        nll -= float(logp.sum())
        n += mb.tokens
    return nll / max(n, 1)


# -- checkpoints ------------------------------------------------------------------------------------------------
def _checkpoint(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    s: _Session,
    step: int,
    total: int,
    metrics: dict[str, Any],
    skipped: dict[str, int],
) -> Ref:
    out = s.tmp / f"step-{step}"
    model.save_pretrained(str(out))
    if s.cfg.finetune == "lora":
        files = {fname: s.store.put_file(out / fname) for fname in ADAPTER_FILES}
    else:
        s.tokenizer.save_pretrained(str(out))  # with the tokenizer, the files are a complete HF model directory
        files = {p.name: s.store.put_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    shutil.rmtree(out)
    files[OPTIMIZER_FILE] = _put_torch(s.store, optimizer.state_dict())
    files[TRAINER_STATE_FILE] = _put_torch(
        s.store, {"step": step, "scheduler": scheduler.state_dict(), "rng": _rng_state()}
    )
    manifest = {
        "schema": SFT_CHECKPOINT_SCHEMA,
        "runId": s.req.run_id,
        "step": step,
        "steps": total,
        "base": s.req.base.to_json(),
        "dataset": s.req.dataset.to_json(),
        "heldOut": s.req.held_out.to_json() if s.req.held_out is not None else None,
        "finetune": s.cfg.finetune,
        "files": {k: v.to_json() for k, v in files.items()},
        "metrics": metrics,
        "sft": s.cfg.to_json(),
        "skipped": skipped,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ref = s.store.put_json(manifest)
    name = sft_checkpoint_name(s.req.run_id, step)
    winner = s.store.create_name(name, ref)
    if winner != ref:
        log.warning("SFT checkpoint %s was committed by another attempt; keeping it", name)
    return winner


def _put_torch(store: ArtifactStore, obj: Any) -> Ref:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return store.put_bytes(buf.getvalue())


def _get_torch(store: ArtifactStore, manifest: dict[str, Any], fname: str, device: torch.device) -> Any:
    data = store.get_bytes(file_ref(manifest, fname, "SFT checkpoint"))
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(optimizer: torch.optim.Optimizer, scheduler: Any, s: _Session, resume: _Resume, total: int) -> int:
    """Load the optimizer, scheduler and RNG states of the resume checkpoint; returns its step."""
    m = resume.manifest
    if m["steps"] != total:
        raise StoreCorruption(f"SFT checkpoint {resume.ref.uri} says {m['steps']} steps; this run has {total}")
    optimizer.load_state_dict(_get_torch(s.store, m, OPTIMIZER_FILE, s.device))
    state = _get_torch(s.store, m, TRAINER_STATE_FILE, torch.device("cpu"))
    if state.get("step") != m["step"]:
        raise StoreCorruption(f"SFT checkpoint {resume.ref.uri}: {TRAINER_STATE_FILE} is of step {state.get('step')}")
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    log.info("SFT run %s resumes after step %d of %d", s.req.run_id, m["step"], total)
    return int(m["step"])


def _load_sft_manifest(store: ArtifactStore, ref: Ref, where: str) -> dict[str, Any]:
    return load_checkpoint_manifest(store, ref, where, SFT_CHECKPOINT_SCHEMA, decode_sft_manifest)


def _same_run(m: dict[str, Any], req: SftRequest, cfg: SftConfig, name: str) -> None:
    """A stored checkpoint of this run id must come from this request's base, data and config."""
    ours = {
        "base": req.base.to_json(),
        "dataset": req.dataset.to_json(),
        "heldOut": req.held_out.to_json() if req.held_out is not None else None,
        "sft": cfg.to_json(),
    }
    for key, value in ours.items():
        if m[key] != value:
            raise ContractError(
                f"SFT run {req.run_id!r} already has checkpoint {name} with {key} {m[key]}; this request has "
                f"{key} {value} (a run id names one run: use a new runId)"
            )


def _resume_point(store: ArtifactStore, req: SftRequest, cfg: SftConfig) -> _Resume | None:
    """The highest `sft/<runId>/step-<k>` of this run, checked against the request; None when there is none."""
    steps = _checkpoint_names(store, req.run_id)
    if not steps:
        return None
    k, name = max(steps)
    ref = store.get_name(name)
    if ref is None:
        raise StoreCorruption(f"Store name {name!r} was listed but holds no pointer")
    m = _load_sft_manifest(store, ref, name)
    if m["step"] != k or m["runId"] != req.run_id:
        raise StoreCorruption(f"Store name {name!r} points at the checkpoint of run {m['runId']!r} step {m['step']}")
    _same_run(m, req, cfg, name)
    return _Resume(ref, m)


def _checkpoint_names(store: ArtifactStore, run_id: str) -> list[tuple[int, str]]:
    """(step, name) of every `sft/<runId>/step-<k>` in the store."""
    prefix = sft_checkpoint_name(run_id, "")
    found = (re.fullmatch(re.escape(prefix) + r"([0-9]+)", name) for name in store.list_names(prefix))
    return [(int(m.group(1)), m.group(0)) for m in found if m is not None]


def _finish(store: ArtifactStore, run_id: str, last: Ref) -> SftResult:
    final = sft_final_name(run_id)
    winner = store.create_name(final, last)
    if winner != last:
        log.warning("SFT final %s was committed by another attempt; returning it", final)
        return _result(store, run_id, winner, reused=True)
    return _result(store, run_id, last, reused=False)


def _result(store: ArtifactStore, run_id: str, final: Ref, *, reused: bool) -> SftResult:
    """The result of a finished run from the store: the final manifest, and one history line per checkpoint."""
    m = _load_sft_manifest(store, final, sft_final_name(run_id))
    history = []
    for step, name in _checkpoint_names(store, run_id):
        ref = store.get_name(name) if step <= m["step"] else None
        if ref is not None:
            metrics = _load_sft_manifest(store, ref, name)["metrics"]
            history.append({"step": step, "loss": metrics["loss"], "heldOutLoss": metrics["heldOutLoss"]})
    history.sort(key=lambda h: h["step"])
    skipped = dict(m.get("skipped") or {"tooLong": 0, "noLossToken": 0})
    return SftResult(run_id, m["steps"], final, reused, history, skipped)
