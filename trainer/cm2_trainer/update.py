"""`update_policy`: one policy update per (run_id, iteration), applied once, saved as a checkpoint.

The store is the one the request's `storeUrl` names (`store.open_store`: a filesystem or an S3 store).
Order of effects (the named pointer is the commit point):

1. If `names/runs/<run_id>/checkpoints/it-<iteration>` exists: return that checkpoint, `reused: true`,
   and do not train.
2. Load the batch blob, the base model (HF directory, or a GGUF file dequantised by transformers;
   float32 on CPU, bfloat16 on GPU), and the parent adapter + optimizer state when `parent` is given.
   With `init` (a LoRA SFT checkpoint, sft.py) and no parent, the adapter starts from the SFT adapter's
   weights with a fresh optimizer.
3. Render the samples (render.py), apply the update (loss.py).
4. Save the adapter files, the optimizer state and the per-token record (`token_record`, the manifest's
   `tokens`) as blobs, then the checkpoint manifest as a blob, then create the named pointer, first writer
   wins. A crash before the pointer leaves only orphan blobs; a retry redoes the update from the parent. Two
   racing attempts cannot both commit: the loser returns the winner's checkpoint with `reused: true`.

version = iteration + 1 (the base policy is version 0).

The KL reference. Without `init` it is the base model: the adapter switched off (loss.py). With `init` it is
the SFT model, base + SFT adapter, frozen, at every iteration (parent or not): the SFT adapter is loaded a
second time as a non-trainable peft adapter named `reference`, and the reference pass runs with it active
(`use_adapter`), then the trainable `default` adapter is switched back on. Loading it as an adapter rather than
computing the reference log-probs on a separately wrapped model before the update keeps one wrapped model,
one rendering and one plan of micro-batches (the reference pass sees exactly the micro-batches the update
trains on), at the cost of a second small LoRA in memory; nothing is merged, so the saved adapter is still a
plain LoRA on the bare base, as the policy server loads it. A checkpoint records its `init`, and a child must
name the same one: the reference cannot change in the middle of a run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .config import TrainerConfig
from .contract import (
    CHECKPOINT_SCHEMA,
    SFT_CHECKPOINT_SCHEMA,
    BaseModel,
    ContractError,
    UpdateRequest,
    decode_batch,
    decode_manifest,
    decode_sft_manifest,
    encode_result,
    metrics_from_wire,
    metrics_to_wire,
    wire_name,
)
from .loss import Heartbeat, TokenLog, apply_update
from .render import RenderedSample, TemplateError, render_sample
from .store import ArtifactStore, Ref, StoreCorruption, open_store

log = logging.getLogger("cm2_trainer.update")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIMIZER_FILE = "optimizer.pt"
TRAINED_ADAPTER = "default"  # peft's name of the adapter a PeftModel is created with
REFERENCE_ADAPTER = "reference"  # the frozen SFT adapter of a run started from `init`
TOKEN_RECORD_VERSION = 1
TOKEN_RECORD_MAX_TOKENS = 200_000  # bounds the `tokens` blob (~40 bytes a token: ~8 MB)


def checkpoint_name(run_id: str, iteration: int) -> str:
    return wire_name("storeNames", "checkpoint", run=run_id, iteration=iteration)


@dataclass(frozen=True)
class UpdateResult:
    run_id: str
    iteration: int
    version: int
    checkpoint: Ref
    reused: bool
    metrics: dict[str, Any]  # wire names: loss, pgLoss, kl, clipFrac, gradNorm, tokens, seconds

    def to_json(self) -> dict[str, Any]:
        snake = metrics_from_wire(self.metrics)
        return encode_result(self.run_id, self.iteration, self.version, self.checkpoint, self.reused, snake)


# -- base model cache ----------------------------------------------------------------------------------------
def resolve_device(cfg: TrainerConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(cfg: TrainerConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[cfg.dtype]


class ModelCache:
    """Keeps the last base model + tokenizer in memory between updates (a worker process is long-lived).

    The base is wrapped with a fresh LoRA adapter for each update and unwrapped (`unload()`) afterwards;
    after any failure the entry is dropped so a half-wrapped model is never reused.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[Any, Any, str | None] | None = None
        self.lock = threading.Lock()

    def get(self, base: BaseModel, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, str | None]:
        key = (base.kind, os.path.abspath(base.path), str(device), str(dtype))
        if self._key != key or self._value is None:
            self.clear()
            self._value = load_base(base, device, dtype)
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = None
        self._value = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_base(base: BaseModel, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, str | None]:
    """(model with frozen weights, tokenizer, chat template the policy server renders with)."""
    from transformers import AutoModelForCausalLM

    from .chat import serving_chat_template
    from .models import load_base_model, load_tokenizer

    path = Path(base.path)
    if base.kind == "gguf":
        if not path.is_file():
            raise ContractError(f"request.base.path is {base.path!r}, which is not a GGUF file on this worker")
    elif not path.is_dir():
        raise ContractError(f"request.base.path is {base.path!r}, which is not a model directory on this worker")
    tokenizer = load_tokenizer(str(path))  # cached conversion of a GGUF vocabulary
    if base.kind == "gguf":
        # Dequantised once and cached as safetensors beside the GGUF (the policy server's loader): reading the
        # GGUF through transformers takes minutes on 2 cores and peaked at ~8 GB RSS for SmolLM2-135M.
        name = {
            torch.float32: "float32",
            torch.bfloat16: "bfloat16",
            torch.float16: "float16",
            torch.float64: "float64",
        }[dtype]
        model = load_base_model(str(path), name)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, serving_chat_template(tokenizer)


# -- the activity body ------------------------------------------------------------------------------------------
def update_policy(
    req: UpdateRequest,
    *,
    heartbeat: Heartbeat | None = None,
    cache: ModelCache | None = None,
    defaults: TrainerConfig | None = None,
) -> UpdateResult:
    t_start = time.perf_counter()
    beat = heartbeat or (lambda _p: None)
    store = open_store(req.store_url)
    name = checkpoint_name(req.run_id, req.iteration)

    existing = store.get_name(name)
    if existing is not None:
        return _result_from_manifest(store, existing, reused=True)

    cfg = req.config(defaults)
    batch = decode_batch(store.get_json(req.batch))
    if (batch.run_id, batch.iteration) != (req.run_id, req.iteration):
        raise ContractError(
            f"batch is for run {batch.run_id!r} iteration {batch.iteration}, request is for run "
            f"{req.run_id!r} iteration {req.iteration}"
        )
    parent = _load_manifest(store, req.parent, "request.parent") if req.parent is not None else None
    if parent is not None and parent["base"] != req.base.to_json():
        raise ContractError(
            f"request.parent was trained on base {parent['base']}, request.base is {req.base.to_json()}"
        )
    init = load_init(store, req.init, req.base) if req.init is not None else None
    req_init = req.init.to_json() if req.init is not None else None
    if parent is not None and parent.get("init") != req_init:
        raise ContractError(
            f"request.init is {req_init}, but the parent checkpoint was trained from init {parent.get('init')} "
            "(the KL reference of a run cannot change)"
        )

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    cache = cache or ModelCache()
    beat({"phase": "load"})
    with cache.lock:
        base_model, tokenizer, chat_template = cache.get(req.base, device, dtype)
        vocab = base_model.get_input_embeddings().weight.shape[0]
        rendered: list[RenderedSample] = []
        for s in batch.samples:
            try:
                r = render_sample(s, tokenizer, chat_template=chat_template, vocab_size=vocab)
            except TemplateError as e:
                raise ContractError(str(e)) from None
            if r.num_loss_tokens > 0:
                rendered.append(r)
        if not rendered:
            raise ContractError("batch has no sample with a loss token")
        t_loaded = time.perf_counter()

        seed = derive_seed(cfg.seed, req.iteration)
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory(prefix="cm2-ckpt-") as tmp:
            tmp_path = Path(tmp)
            model = None
            try:
                model, optimizer = _wrap(base_model, cfg, store, parent, init, tmp_path, device)
                pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                reference = (lambda: use_adapter(model, REFERENCE_ADAPTER)) if init is not None else None
                token_log = TokenLog(rendered)
                metrics = apply_update(
                    model,
                    optimizer,
                    rendered,
                    cfg,
                    seed=seed,
                    pad_id=int(pad_id or 0),
                    device=device,
                    heartbeat=beat,
                    reference=reference,
                    token_log=token_log,
                )
                beat({"phase": "save"})
                t_trained = time.perf_counter()
                files = _save(model, optimizer, store, tmp_path / "out")
            except BaseException:
                cache.clear()  # never reuse a half-wrapped base
                raise
            finally:
                if model is not None and cache._value is not None:
                    model.unload()  # remove the LoRA layers; the cached base is the plain model again

    tokens_ref = store.put_json(token_record(token_log, tokenizer, cfg))
    wire_metrics = metrics_to_wire(metrics)
    manifest = {
        "schema": CHECKPOINT_SCHEMA,
        "runId": req.run_id,
        "iteration": req.iteration,
        "version": req.iteration + 1,
        "base": req.base.to_json(),
        "parent": req.parent.to_json() if req.parent is not None else None,
        "init": req_init,
        "batch": req.batch.to_json(),
        "files": {k: v.to_json() for k, v in files.items()},
        "tokens": tokens_ref.to_json(),
        "metrics": wire_metrics,
        "trainer": cfg.to_json(),
        "stats": {
            "optimizerSteps": metrics["optimizer_steps"],
            "skippedSteps": metrics["skipped_steps"],
            "samples": metrics["samples"],
            "droppedSamples": len(batch.samples) - len(rendered),
            "loadSeconds": t_loaded - t_start,
            "saveSeconds": time.perf_counter() - t_trained,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "chatTemplate": "tokenizer" if chat_template is None else "cm2-tool-chatml",
        },
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_ref = store.put_json(manifest)
    winner = store.create_name(name, manifest_ref)
    if winner != manifest_ref:
        log.warning("Checkpoint %s was committed by another attempt; returning it", name)
        return _result_from_manifest(store, winner, reused=True)
    return UpdateResult(req.run_id, req.iteration, req.iteration + 1, manifest_ref, False, wire_metrics)


def token_record(
    log: TokenLog, tokenizer: Any, cfg: TrainerConfig, max_tokens: int = TOKEN_RECORD_MAX_TOKENS
) -> dict[str, Any]:
    """The blob the manifest's `tokens` points at: per trained sample (batch order), per assistant message (token
    order), each loss token's text (the single id decoded, special tokens kept), id, advantage, serving log-prob
    (null when unknown), old log-prob and, with rollout correction on, the importance weight the loss used.
    Floats have 5 significant digits. Samples that would take the total past `max_tokens` are left out
    (`truncated`)."""
    texts: dict[int, str] = {}

    def text(t: int) -> str:
        if t not in texts:
            texts[t] = tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return texts[t]

    samples: list[dict[str, Any]] = []
    total, truncated = 0, False
    for k, s in enumerate(log.samples):
        st = log.stats(k)
        if st is None:
            continue
        if total + len(st.positions) > max_tokens:
            truncated = True
            break
        total += len(st.positions)
        spans: list[list[int]] = []  # [message index, first, end) over the sample's loss tokens
        for j, t in enumerate(st.positions):
            m = s.message_index[t] if s.message_index is not None else -1
            if spans and spans[-1][0] == m:
                spans[-1][2] = j + 1
            else:
                spans.append([m, j, j + 1])
        steps = [
            {
                "messageIndex": m,
                "tokens": [text(t) for t in st.token_ids[a:b]],
                "tokenIds": st.token_ids[a:b],
                "advantage": [_r5(x) for x in st.advantages[a:b]],
                "rolloutLogprob": [None if x is None else _r5(x) for x in st.rollout_logprobs[a:b]],
                "oldLogprob": [_r5(x) for x in st.old_logprobs[a:b]],
                "isWeight": [_r5(x) for x in st.is_weights[a:b]] if st.is_weights is not None else None,
            }
            for m, a, b in spans
        ]
        samples.append({"episodeId": s.episode_id, "vetoed": st.vetoed, "steps": steps})
    on = cfg.rollout_is_cap is not None
    return {
        "version": TOKEN_RECORD_VERSION,
        "isCap": cfg.rollout_is_cap,
        "isVeto": cfg.rollout_is_veto if on else None,
        "truncated": truncated,
        "samples": samples,
    }


def _r5(x: float) -> float | None:
    """5 significant digits; null for a non-finite value (JSON has none)."""
    return float(f"{x:.5g}") if math.isfinite(x) else None


def derive_seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration) % (2**31 - 1)


def lora_config(rank: int, alpha: float, cfg: TrainerConfig) -> Any:
    """The LoRA shape every cm2 adapter has (RL and SFT): `cfg`'s target modules and dropout, no bias."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # typed int by peft; any positive scale works
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def copy_adapter(store: ArtifactStore, manifest: dict[str, Any], dest: Path) -> Path:
    """The adapter files of a checkpoint manifest (RL or SFT: the same file names) as a peft adapter directory."""
    dest.mkdir(parents=True)
    for fname in ADAPTER_FILES:
        store.copy_to(file_ref(manifest, fname), dest / fname)
    return dest


@contextlib.contextmanager
def use_adapter(model: Any, name: str) -> Iterator[None]:
    """Forward passes inside run with adapter `name` active and frozen; afterwards the trainable adapter is
    active and trainable again (peft's `set_adapter` sets requires_grad on the adapter it activates)."""
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(TRAINED_ADAPTER)


def _wrap(
    base_model: Any,
    cfg: TrainerConfig,
    store: ArtifactStore,
    parent: dict[str, Any] | None,
    init: dict[str, Any] | None,
    tmp: Path,
    device: torch.device,
) -> tuple[Any, torch.optim.Optimizer]:
    """The policy model: a fresh adapter, or the parent's, or (no parent) the init SFT adapter's weights; with
    `init`, also the frozen reference adapter. Returns it with its AdamW (the parent's state when given)."""
    from peft import PeftModel, get_peft_model

    start = parent if parent is not None else init
    if start is None:
        model: Any = get_peft_model(base_model, lora_config(cfg.lora_rank, cfg.lora_alpha, cfg))
    else:
        model = PeftModel.from_pretrained(base_model, str(copy_adapter(store, start, tmp / "start")), is_trainable=True)
        pc: Any = model.peft_config[TRAINED_ADAPTER]  # a LoraConfig (written by this trainer)
        if (pc.r, pc.lora_alpha) != (cfg.lora_rank, cfg.lora_alpha):
            # keep the adapter's shape; a silent reshape would throw the learned adapter away
            model.unload()
            raise ContractError(
                f"request.trainer has loraRank {cfg.lora_rank}, loraAlpha {cfg.lora_alpha}; the "
                f"{'parent' if parent is not None else 'init (SFT)'} adapter has {pc.r}, {pc.lora_alpha}"
            )
    if init is not None:
        model.load_adapter(str(copy_adapter(store, init, tmp / "init")), REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter(TRAINED_ADAPTER)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    beta1, beta2 = cfg.betas
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if parent is not None and OPTIMIZER_FILE in parent["files"]:
        state = torch.load(
            io.BytesIO(store.get_bytes(file_ref(parent, OPTIMIZER_FILE))), map_location=device, weights_only=True
        )
        optimizer.load_state_dict(state)
        for g in optimizer.param_groups:  # this request's hyperparameters win over the saved ones
            g.update(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    return model, optimizer


def _save(model: Any, optimizer: torch.optim.Optimizer, store: ArtifactStore, out: Path) -> dict[str, Ref]:
    model.save_pretrained(str(out), selected_adapters=[TRAINED_ADAPTER])  # not the frozen reference
    files = {fname: store.put_file(out / fname) for fname in ADAPTER_FILES}
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    files[OPTIMIZER_FILE] = store.put_bytes(buf.getvalue())
    return files


def file_ref(manifest: dict[str, Any], fname: str, what: str = "checkpoint") -> Ref:
    """The ref of file `fname` of a checkpoint manifest (RL or SFT); a missing file is store corruption."""
    try:
        return Ref.from_json(manifest["files"][fname], where=f"{what}.files[{fname!r}]")
    except KeyError:
        raise StoreCorruption(f"The {what} manifest has no file {fname!r}") from None


def _load_manifest(store: ArtifactStore, ref: Ref, where: str) -> dict[str, Any]:
    return load_checkpoint_manifest(store, ref, where, CHECKPOINT_SCHEMA, decode_manifest)


def load_checkpoint_manifest(
    store: ArtifactStore, ref: Ref, where: str, schema: str, decode: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """A manifest of the given schema. Another schema is the caller's mistake (`ContractError`); a manifest of
    the right schema that does not decode was written wrongly or damaged (`StoreCorruption`)."""
    m = store.get_json(ref)
    if not isinstance(m, dict) or m.get("schema") != schema:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise ContractError(f"{where} points at {got!r}, expected a {schema} manifest")
    try:
        return decode(m)
    except ContractError as e:
        raise StoreCorruption(f"Checkpoint manifest {ref.uri} is malformed: {e}") from None


def load_init(store: ArtifactStore, ref: Ref, base: BaseModel) -> dict[str, Any]:
    """The SFT checkpoint an RL run starts from: a LoRA adapter trained on the same base."""
    m = load_checkpoint_manifest(store, ref, "request.init", SFT_CHECKPOINT_SCHEMA, decode_sft_manifest)
    if m["finetune"] != "lora":
        raise ContractError(
            f"request.init {ref.uri} is a {m['finetune']} fine-tune SFT checkpoint, which has no adapter to start "
            "from; use its model as the run's base instead (trainer.base, kind 'hf', a directory)"
        )
    if m["base"] != base.to_json():
        raise ContractError(f"request.init was trained on base {m['base']}, request.base is {base.to_json()}")
    return m


def _result_from_manifest(store: ArtifactStore, ref: Ref, *, reused: bool) -> UpdateResult:
    m = _load_manifest(store, ref, "checkpoint")
    return UpdateResult(m["runId"], m["iteration"], m["version"], ref, reused, dict(m["metrics"]))
