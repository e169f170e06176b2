"""Wire contract with the TypeScript orchestrator: strict decoders for the update request and the batch blob,
and the encoder of the result. Field meanings: tests/contracts/README.md; fixtures beside it.

Hand-written validation on dataclasses (no pydantic): the shapes are small, and an error message that names
the field path and the bad value is what the orchestrator shows when it gets `InvalidBatch`. Unknown fields
are rejected in the objects we own (request, trainer, batch, sample, advantage, completion, the SFT request
and its manifests); OpenAI messages and tools are checked for what rendering needs and otherwise passed through
untouched. The dataset manifest and its records are the TypeScript side's format (store/datasets.ts,
core/records.ts): their decoders read what SFT needs and reject only what would train wrongly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SFT_INT_FIELDS, SFT_STR_FIELDS, SFT_WIRE_FIELDS, WIRE_FIELDS, SftConfig, TrainerConfig
from .store import InvalidRef, Ref

BATCH_SCHEMA = "cm2.batch/v1"
CHECKPOINT_SCHEMA = "cm2.checkpoint/v1"
SFT_CHECKPOINT_SCHEMA = "cm2.sft-checkpoint/v1"
DATASET_SCHEMA = "cm2.dataset/v1"
# Names that cross the wire: the one list both languages read. `core/wire_names.json` is the source; this package
# carries a byte-identical copy (package data, so an installed trainer has it), which a test keeps equal.
WIRE_NAMES: dict[str, Any] = json.loads((Path(__file__).resolve().parent / "wire_names.json").read_text())
ACTIVITY_NAME: str = WIRE_NAMES["activities"]["updatePolicy"]
SFT_ACTIVITY_NAME: str = WIRE_NAMES["activities"]["sftTrain"]
TASK_QUEUE: str = WIRE_NAMES["taskQueues"]["trainer"]


def wire_name(kind: str, key: str, **fields: Any) -> str:
    """A name from the shared list with its ``{field}`` placeholders filled (e.g. a checkpoint's store name)."""
    return str(WIRE_NAMES[kind][key]).format(**fields)


# ApplicationError types raised by the activity (closed list; the orchestrator branches on these).
ERR_INVALID_BATCH = "InvalidBatch"  # bad request or batch content: non-retryable
ERR_MISSING_ARTIFACT = "MissingArtifact"  # a ref points at nothing: non-retryable
ERR_STORE_CORRUPTION = "StoreCorruption"  # a blob fails its size/sha256 check: non-retryable
ERR_TRAINING_DIVERGED = "TrainingDiverged"  # non-finite loss or gradient: non-retryable, nothing saved
ERROR_TYPES = (ERR_INVALID_BATCH, ERR_MISSING_ARTIFACT, ERR_STORE_CORRUPTION, ERR_TRAINING_DIVERGED)

ROLES = ("system", "user", "assistant", "tool")


class ContractError(ValueError):
    """Invalid request or batch; the message names the field and the value."""


# -- small helpers ---------------------------------------------------------------------------------------
def _obj(v: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(v, dict):
        raise ContractError(f"{where} is {_short(v)}, expected an object")
    missing = required - set(v)
    if missing:
        raise ContractError(f"{where} is missing {sorted(missing)}")
    extra = set(v) - required - set(optional)
    if extra:
        raise ContractError(f"{where} has unknown fields {sorted(extra)}")
    return v


def _str(v: Any, where: str, nonempty: bool = True) -> str:
    if not isinstance(v, str) or (nonempty and not v):
        raise ContractError(f"{where} is {_short(v)}, expected a {'non-empty ' if nonempty else ''}string")
    return v


def _int(v: Any, where: str, lo: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo):
        raise ContractError(f"{where} is {_short(v)}, expected an integer{f' >= {lo}' if lo is not None else ''}")
    return v


def _num(v: Any, where: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ContractError(f"{where} is {_short(v)}, expected a finite number")
    return float(v)


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ContractError(f"{where} is {_short(v)}, expected an array")
    return v


def _ref(v: Any, where: str) -> Ref:
    try:
        return Ref.from_json(v, where=where)
    except InvalidRef as e:
        raise ContractError(str(e)) from None


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# -- request ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseModel:
    kind: str  # "hf" | "gguf"
    path: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True)
class UpdateRequest:
    run_id: str
    iteration: int
    batch: Ref
    base: BaseModel
    parent: Ref | None
    store_url: str  # the artifact store (store.open_store): file:///abs/path or s3://bucket/prefix
    trainer: dict[str, Any]  # TrainerConfig field name -> value, only the fields the wire carried
    init: Ref | None = None  # a LoRA SFT checkpoint manifest: the policy's start and the KL reference

    def config(self, defaults: TrainerConfig | None = None) -> TrainerConfig:
        try:
            return (defaults or TrainerConfig()).replace(**self.trainer)
        except ValueError as e:
            raise ContractError(f"request.trainer: {e}") from None


def decode_update_request(obj: Any) -> UpdateRequest:
    w = "request"
    o = _obj(obj, w, {"runId", "iteration", "batch", "base", "parent", "storeUrl", "trainer"}, {"init"})
    run_id = _run_id(o["runId"], f"{w}.runId")
    iteration = _int(o["iteration"], f"{w}.iteration", lo=0)
    batch = _ref(o["batch"], f"{w}.batch")
    base = _base(o["base"], f"{w}.base")
    parent = _opt_ref(o["parent"], f"{w}.parent")
    init = _opt_ref(o.get("init"), f"{w}.init")
    store_url = _str(o["storeUrl"], f"{w}.storeUrl")
    t = _obj(o["trainer"], f"{w}.trainer", set(), set(WIRE_FIELDS))
    trainer: dict[str, Any] = {}
    for wire, name in WIRE_FIELDS.items():
        if wire not in t:
            continue
        where = f"{w}.trainer.{wire}"
        if name == "seed":
            trainer[name] = _int(t[wire], where)
        elif name == "loss_agg":
            trainer[name] = _str(t[wire], where)
        elif name == "rollout_is_cap" and t[wire] is None:
            trainer[name] = None
        elif name in ("mini_batches", "lora_rank"):
            trainer[name] = _int(t[wire], where, lo=0)
        else:
            trainer[name] = _num(t[wire], where)
    req = UpdateRequest(run_id, iteration, batch, base, parent, store_url, trainer, init)
    req.config()  # range checks, with the field named
    return req


def _name_segment_ok(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) is not None


def _run_id(v: Any, where: str) -> str:
    """A run id: one store-name segment (it becomes part of checkpoint pointer names)."""
    run_id = _str(v, where)
    if "/" in run_id or run_id in (".", "..") or not _name_segment_ok(run_id):
        raise ContractError(f"{where} is {run_id!r}, expected one name segment [A-Za-z0-9][A-Za-z0-9._-]*")
    return run_id


def _base(v: Any, where: str) -> BaseModel:
    b = _obj(v, where, {"kind", "path"})
    if b["kind"] not in ("hf", "gguf"):
        raise ContractError(f"{where}.kind is {_short(b['kind'])}, expected 'hf' or 'gguf'")
    return BaseModel(b["kind"], _str(b["path"], f"{where}.path"))


def _opt_ref(v: Any, where: str) -> Ref | None:
    return None if v is None else _ref(v, where)


# -- batch -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completion:
    message_index: int
    token_ids: list[int]
    logprobs: list[float] | None


@dataclass(frozen=True)
class Sample:
    episode_id: str
    group_id: str
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    advantages: dict[int, float]  # messageIndex -> advantage
    completions: dict[int, Completion] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    run_id: str
    iteration: int
    samples: list[Sample]


def decode_batch(obj: Any) -> Batch:
    w = "batch"
    o = _obj(obj, w, {"schema", "runId", "iteration", "samples"})
    if o["schema"] != BATCH_SCHEMA:
        raise ContractError(f"{w}.schema is {_short(o['schema'])}, expected {BATCH_SCHEMA!r}")
    run_id = _str(o["runId"], f"{w}.runId")
    iteration = _int(o["iteration"], f"{w}.iteration", lo=0)
    samples = [_decode_sample(s, f"{w}.samples[{i}]") for i, s in enumerate(_list(o["samples"], f"{w}.samples"))]
    if not samples:
        raise ContractError(f"{w}.samples is empty, expected at least one sample")
    return Batch(run_id, iteration, samples)


def _decode_sample(obj: Any, w: str) -> Sample:
    o = _obj(obj, w, {"episodeId", "groupId", "tools", "messages", "advantages"}, {"completions"})
    episode_id = _str(o["episodeId"], f"{w}.episodeId")
    group_id = _str(o["groupId"], f"{w}.groupId")
    tools = [_check_tool(t, f"{w}.tools[{i}]") for i, t in enumerate(_list(o["tools"], f"{w}.tools"))]
    messages = [_check_message(m, f"{w}.messages[{i}]") for i, m in enumerate(_list(o["messages"], f"{w}.messages"))]
    if not messages:
        raise ContractError(f"{w}.messages is empty")

    def assistant_index(v: Any, where: str) -> int:
        i = _int(v, where, lo=0)
        if i >= len(messages) or messages[i]["role"] != "assistant":
            role = messages[i]["role"] if i < len(messages) else "out of range"
            raise ContractError(f"{where} is {i} ({role}), expected the index of an assistant message")
        return i

    advantages: dict[int, float] = {}
    for k, a in enumerate(_list(o["advantages"], f"{w}.advantages")):
        aw = f"{w}.advantages[{k}]"
        a = _obj(a, aw, {"messageIndex", "advantage"})
        i = assistant_index(a["messageIndex"], f"{aw}.messageIndex")
        if i in advantages:
            raise ContractError(f"{aw}.messageIndex is {i}, which appears twice")
        advantages[i] = _num(a["advantage"], f"{aw}.advantage")

    completions: dict[int, Completion] = {}
    for k, c in enumerate(_list(o.get("completions", []), f"{w}.completions")):
        cw = f"{w}.completions[{k}]"
        c = _obj(c, cw, {"messageIndex", "tokenIds"}, {"logprobs"})
        i = assistant_index(c["messageIndex"], f"{cw}.messageIndex")
        if i in completions:
            raise ContractError(f"{cw}.messageIndex is {i}, which appears twice")
        ids = [_int(t, f"{cw}.tokenIds[{j}]", lo=0) for j, t in enumerate(_list(c["tokenIds"], f"{cw}.tokenIds"))]
        if not ids:
            raise ContractError(f"{cw}.tokenIds is empty")
        lps = None
        if c.get("logprobs") is not None:
            lps = [_num(x, f"{cw}.logprobs[{j}]") for j, x in enumerate(_list(c["logprobs"], f"{cw}.logprobs"))]
            if len(lps) != len(ids):
                raise ContractError(f"{cw}.logprobs has {len(lps)} values for {len(ids)} tokenIds")
        completions[i] = Completion(i, ids, lps)
    return Sample(episode_id, group_id, tools, messages, advantages, completions)


def _check_tool(t: Any, w: str) -> dict[str, Any]:
    o = _obj(t, w, {"type", "function"})
    if o["type"] != "function":
        raise ContractError(f"{w}.type is {_short(o['type'])}, expected 'function'")
    f = o["function"]
    if not isinstance(f, dict):
        raise ContractError(f"{w}.function is {_short(f)}, expected an object")
    _str(f.get("name"), f"{w}.function.name")
    return t


def _check_message(m: Any, w: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise ContractError(f"{w} is {_short(m)}, expected an object")
    role = m.get("role")
    if role not in ROLES:
        raise ContractError(f"{w}.role is {_short(role)}, expected one of {list(ROLES)}")
    content = m.get("content")
    calls = m.get("tool_calls")
    if role == "assistant":
        if content is not None and not isinstance(content, str):
            raise ContractError(f"{w}.content is {_short(content)}, expected a string or null")
        if calls is not None:
            for j, c in enumerate(_list(calls, f"{w}.tool_calls")):
                cw = f"{w}.tool_calls[{j}]"
                c = _obj(c, cw, {"id", "type", "function"})
                _str(c["id"], f"{cw}.id")
                if c["type"] != "function":
                    raise ContractError(f"{cw}.type is {_short(c['type'])}, expected 'function'")
                fn = _obj(c["function"], f"{cw}.function", {"name", "arguments"})
                _str(fn["name"], f"{cw}.function.name")
                _str(fn["arguments"], f"{cw}.function.arguments", nonempty=False)
        if content is None and not calls:
            raise ContractError(f"{w} has neither content nor tool_calls")
    else:
        if calls is not None:
            raise ContractError(f"{w} has tool_calls but role {role!r}")
        if not isinstance(content, str):
            raise ContractError(f"{w}.content is {_short(content)}, expected a string")
        if role == "tool":
            _str(m.get("tool_call_id"), f"{w}.tool_call_id")
    return m


# -- result ----------------------------------------------------------------------------------------------
METRIC_WIRE = {
    "loss": "loss",
    "pg_loss": "pgLoss",
    "kl": "kl",
    "clip_frac": "clipFrac",
    "grad_norm": "gradNorm",
    "tokens": "tokens",
    "seconds": "seconds",
}
# Rollout-correction metrics: null when no loss token had serving log-probs (or correction is off). Optional
# on decode, so that manifests written before they existed still read.
METRIC_WIRE_OPTIONAL = {
    "is_mean_weight": "isMeanWeight",
    "is_vetoed_share": "isVetoedShare",
    "entropy": "entropy",
}


def encode_result(
    run_id: str, iteration: int, version: int, checkpoint: Ref, reused: bool, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "runId": run_id,
        "iteration": iteration,
        "version": version,
        "checkpoint": checkpoint.to_json(),
        "reused": reused,
        "metrics": metrics_to_wire(metrics),
    }


def metrics_to_wire(metrics: dict[str, Any]) -> dict[str, Any]:
    """Update metrics (loss.apply_update's names) in wire names; the optional ones null when absent."""
    return {
        **{wire: metrics[name] for name, wire in METRIC_WIRE.items()},
        **{wire: metrics.get(name) for name, wire in METRIC_WIRE_OPTIONAL.items()},
    }


def metrics_from_wire(wire: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`metrics_to_wire` (a manifest written before the optional ones gives null)."""
    return {
        **{name: wire[w] for name, w in METRIC_WIRE.items()},
        **{name: wire.get(w) for name, w in METRIC_WIRE_OPTIONAL.items()},
    }


def decode_result(obj: Any) -> dict[str, Any]:
    """Strict check of a result object (used by tests and by the worker before returning)."""
    w = "result"
    o = _obj(obj, w, {"runId", "iteration", "version", "checkpoint", "reused", "metrics"})
    _str(o["runId"], f"{w}.runId")
    it = _int(o["iteration"], f"{w}.iteration", lo=0)
    if _int(o["version"], f"{w}.version", lo=1) != it + 1:
        raise ContractError(f"{w}.version is {o['version']}, expected iteration + 1 = {it + 1}")
    _ref(o["checkpoint"], f"{w}.checkpoint")
    if not isinstance(o["reused"], bool):
        raise ContractError(f"{w}.reused is {_short(o['reused'])}, expected a boolean")
    _metrics(o["metrics"], f"{w}.metrics")
    return o


def _metrics(v: Any, where: str) -> None:
    m = _obj(v, where, set(METRIC_WIRE.values()), set(METRIC_WIRE_OPTIONAL.values()))
    for k in METRIC_WIRE.values():
        (_int(m[k], f"{where}.tokens", lo=0) if k == "tokens" else _num(m[k], f"{where}.{k}"))
    for k in METRIC_WIRE_OPTIONAL.values():
        if m.get(k) is not None:
            _num(m[k], f"{where}.{k}")


# -- checkpoint manifest (a blob; read by the orchestrator to publish the adapter) ----------------------------
def decode_manifest(obj: Any) -> dict[str, Any]:
    w = "checkpoint"
    o = _obj(
        obj,
        w,
        {
            "schema",
            "runId",
            "iteration",
            "version",
            "base",
            "parent",
            "batch",
            "files",
            "metrics",
            "trainer",
            "stats",
            "createdAt",
        },
        # `init`: written since RL can start from an SFT checkpoint; `tokens` (the per-token record of the update,
        # update.token_record) since the viewer shows it. Both absent in older manifests.
        {"init", "tokens"},
    )
    if o["schema"] != CHECKPOINT_SCHEMA:
        raise ContractError(f"{w}.schema is {_short(o['schema'])}, expected {CHECKPOINT_SCHEMA!r}")
    _str(o["runId"], f"{w}.runId")
    it = _int(o["iteration"], f"{w}.iteration", lo=0)
    if _int(o["version"], f"{w}.version", lo=1) != it + 1:
        raise ContractError(f"{w}.version is {o['version']}, expected iteration + 1 = {it + 1}")
    b = _obj(o["base"], f"{w}.base", {"kind", "path"})
    if b["kind"] not in ("hf", "gguf"):
        raise ContractError(f"{w}.base.kind is {_short(b['kind'])}, expected 'hf' or 'gguf'")
    if o["parent"] is not None:
        _ref(o["parent"], f"{w}.parent")
    _ref(o["batch"], f"{w}.batch")
    for k in ("init", "tokens"):
        if o.get(k) is not None:
            _ref(o[k], f"{w}.{k}")
    _files(o["files"], f"{w}.files")
    _metrics(o["metrics"], f"{w}.metrics")
    for k in ("trainer", "stats"):
        if not isinstance(o[k], dict):
            raise ContractError(f"{w}.{k} is {_short(o[k])}, expected an object")
    _str(o["createdAt"], f"{w}.createdAt")
    return o


def _files(files: Any, w: str) -> None:
    if not isinstance(files, dict) or not files:
        raise ContractError(f"{w} is {_short(files)}, expected an object of file name -> ref")
    for name, ref in files.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ContractError(f"{w} has the file name {name!r}, expected a plain file name")
        _ref(ref, f"{w}[{name!r}]")


# -- cold-start SFT (`sftTrain`) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SftRequest:
    run_id: str
    dataset: Ref  # a cm2.dataset/v1 manifest: the training records
    held_out: Ref | None  # a cm2.dataset/v1 manifest scored at each checkpoint, or None
    base: BaseModel
    store_url: str
    sft: dict[str, Any]  # SftConfig field name -> value, only the fields the wire carried

    def config(self) -> SftConfig:
        try:
            return SftConfig(**self.sft)
        except ValueError as e:
            raise ContractError(f"request.sft.{e}") from None


def decode_sft_request(obj: Any) -> SftRequest:
    w = "request"
    o = _obj(obj, w, {"runId", "dataset", "heldOut", "base", "storeUrl", "sft"})
    s = _obj(o["sft"], f"{w}.sft", set(), set(SFT_WIRE_FIELDS))
    sft: dict[str, Any] = {}
    for wire, name in SFT_WIRE_FIELDS.items():
        if wire not in s:
            continue
        where = f"{w}.sft.{wire}"
        if name in SFT_INT_FIELDS:
            sft[name] = _int(s[wire], where)
        elif name in SFT_STR_FIELDS:
            sft[name] = _str(s[wire], where)
        else:
            sft[name] = _num(s[wire], where)
    req = SftRequest(
        _run_id(o["runId"], f"{w}.runId"),
        _ref(o["dataset"], f"{w}.dataset"),
        _opt_ref(o["heldOut"], f"{w}.heldOut"),
        _base(o["base"], f"{w}.base"),
        _str(o["storeUrl"], f"{w}.storeUrl"),
        sft,
    )
    req.config()  # range checks, with the field named
    return req


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    records: list[Ref]


def decode_dataset_manifest(obj: Any, where: str) -> DatasetManifest:
    """The parts of a stored dataset's manifest (store/datasets.ts) that SFT reads: its name and record refs.
    Other keys (sources, provenance, versions) are the TypeScript side's and are not checked here."""
    if not isinstance(obj, dict):
        raise ContractError(f"{where} points at {_short(obj)}, expected a {DATASET_SCHEMA} manifest")
    if obj.get("schema") != DATASET_SCHEMA:
        raise ContractError(f"{where} points at a {_short(obj.get('schema'))} manifest, expected {DATASET_SCHEMA!r}")
    name = _str(obj.get("name"), f"{where}.name")
    records = [_ref(r, f"{where}.records[{i}]") for i, r in enumerate(_list(obj.get("records"), f"{where}.records"))]
    count = _int(obj.get("count"), f"{where}.count", lo=0)
    if count != len(records):
        raise ContractError(f"{where}.count is {count}, but it lists {len(records)} records")
    return DatasetManifest(name, records)


def decode_record(obj: Any, where: str) -> Sample:
    """A stored trajectory record (core/records.ts) as a training sample in which every assistant message is
    trained with advantage 1.0: SFT renders it with the one renderer RL uses (render.py).

    Records are normalised to the batch contract's message shape first (`_record_messages`). `checklists` and
    `meta` are not needed to train and are not checked."""
    o = _obj(obj, where, {"uuid", "tools", "messages"}, {"checklists", "meta"})
    uuid = _str(o["uuid"], f"{where}.uuid")
    tools = [_check_tool(t, f"{where}.tools[{i}]") for i, t in enumerate(_list(o["tools"], f"{where}.tools"))]
    raw = _list(o["messages"], f"{where}.messages")
    messages = [_check_message(m, f"{where}.messages[{i}]") for i, m in enumerate(_record_messages(raw))]
    if not messages:
        raise ContractError(f"{where}.messages is empty")
    advantages = {i: 1.0 for i, m in enumerate(messages) if m["role"] == "assistant"}
    return Sample(uuid, uuid, tools, messages, advantages)


def _record_messages(raw: list[Any]) -> list[Any]:
    """Copies of a record's messages in the batch contract's shape, rendering the same. Records carry
    `tool_calls: []` on every message (the TypeScript schema's default): dropped where the batch contract does
    not allow the key. A record's call id may be "" and its tool responses may omit `tool_call_id` (the k-th
    tool message after an assistant message answers its k-th call, core/records.ts): an empty id becomes
    `call_<k>`, the id every template is given for it anyway (`render.template_tool_call`), and a missing
    `tool_call_id` the id of the call it answers."""
    out: list[Any] = []
    pending: list[str] = []  # ids of the calls of the last assistant message not answered yet
    for m in raw:
        if not isinstance(m, dict):
            out.append(m)  # _check_message names it
            continue
        m = dict(m)
        calls = m.get("tool_calls")
        if m.get("role") != "assistant" and calls == []:
            del m["tool_calls"]
        if m.get("role") == "assistant" and isinstance(calls, list):
            m["tool_calls"] = [_with_call_id(c, k) for k, c in enumerate(calls)]
            pending = [c["id"] for c in m["tool_calls"] if isinstance(c, dict) and isinstance(c.get("id"), str)]
        elif m.get("role") == "tool" and pending:
            answered = pending.pop(0)
            if m.get("tool_call_id") is None:
                m["tool_call_id"] = answered
        else:
            pending = []
        out.append(m)
    return out


def _with_call_id(call: Any, k: int) -> Any:
    if isinstance(call, dict) and call.get("id") == "":
        return {**call, "id": f"call_{k}"}
    return call


def decode_sft_manifest(obj: Any, where: str = "sft checkpoint") -> dict[str, Any]:
    """Strict check of an SFT checkpoint manifest (written by sft.py; the format is in its module doc)."""
    w = where
    o = _obj(
        obj,
        w,
        {
            "schema",
            "runId",
            "step",
            "steps",
            "base",
            "dataset",
            "heldOut",
            "finetune",
            "files",
            "metrics",
            "sft",
            "createdAt",
        },
        {"skipped"},
    )
    if o["schema"] != SFT_CHECKPOINT_SCHEMA:
        raise ContractError(f"{w}.schema is {_short(o['schema'])}, expected {SFT_CHECKPOINT_SCHEMA!r}")
    _run_id(o["runId"], f"{w}.runId")
    steps = _int(o["steps"], f"{w}.steps", lo=1)
    step = _int(o["step"], f"{w}.step", lo=1)
    if step > steps:
        raise ContractError(f"{w}.step is {step}, more than its steps {steps}")
    _base(o["base"], f"{w}.base")
    _ref(o["dataset"], f"{w}.dataset")
    _opt_ref(o["heldOut"], f"{w}.heldOut")
    if o["finetune"] not in ("lora", "full"):
        raise ContractError(f"{w}.finetune is {_short(o['finetune'])}, expected 'lora' or 'full'")
    _files(o["files"], f"{w}.files")
    m = _obj(o["metrics"], f"{w}.metrics", {"loss", "heldOutLoss"})
    _opt_num(m["loss"], f"{w}.metrics.loss")
    _opt_num(m["heldOutLoss"], f"{w}.metrics.heldOutLoss")
    try:
        SftConfig(**{SFT_WIRE_FIELDS[k]: v for k, v in _obj(o["sft"], f"{w}.sft", set(SFT_WIRE_FIELDS)).items()})
    except ValueError as e:
        raise ContractError(f"{w}.sft.{e}") from None
    if "skipped" in o:
        _skipped(o["skipped"], f"{w}.skipped")
    _str(o["createdAt"], f"{w}.createdAt")
    return o


def _opt_num(v: Any, where: str) -> float | None:
    return None if v is None else _num(v, where)


def _skipped(v: Any, where: str) -> dict[str, int]:
    s = _obj(v, where, {"tooLong", "noLossToken"})
    return {k: _int(s[k], f"{where}.{k}", lo=0) for k in ("tooLong", "noLossToken")}


def decode_sft_result(obj: Any) -> dict[str, Any]:
    """Strict check of an `sftTrain` result (used by tests and by the worker before returning)."""
    w = "result"
    o = _obj(obj, w, {"runId", "steps", "checkpoint", "reused", "history", "skipped"})
    _run_id(o["runId"], f"{w}.runId")
    steps = _int(o["steps"], f"{w}.steps", lo=1)
    _ref(o["checkpoint"], f"{w}.checkpoint")
    if not isinstance(o["reused"], bool):
        raise ContractError(f"{w}.reused is {_short(o['reused'])}, expected a boolean")
    last = 0
    for i, h in enumerate(_list(o["history"], f"{w}.history")):
        hw = f"{w}.history[{i}]"
        h = _obj(h, hw, {"step", "loss", "heldOutLoss"})
        step = _int(h["step"], f"{hw}.step", lo=1)
        if step <= last or step > steps:
            raise ContractError(f"{hw}.step is {step}, expected increasing steps in [1, {steps}]")
        last = step
        _opt_num(h["loss"], f"{hw}.loss")
        _opt_num(h["heldOutLoss"], f"{hw}.heldOutLoss")
    if last != steps:
        raise ContractError(f"{w}.history ends at step {last}, expected the final step {steps}")
    _skipped(o["skipped"], f"{w}.skipped")
    return o
