"""Wire contract with the TypeScript orchestrator: strict decoders for the update request and the batch blob,
and the encoder of the result. Field meanings: tests/contracts/README.md; fixtures beside it.

Hand-written validation on dataclasses (no pydantic): the shapes are small, and an error message that names
the field path and the bad value is what the orchestrator shows when it gets `InvalidBatch`. Unknown fields
are rejected in the objects we own (request, trainer, batch, sample, advantage, completion); OpenAI
messages and tools are checked for what rendering needs and otherwise passed through untouched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import WIRE_FIELDS, TrainerConfig
from .store import InvalidRef, Ref

BATCH_SCHEMA = "cm2.batch/v1"
CHECKPOINT_SCHEMA = "cm2.checkpoint/v1"
# Names that cross the wire: the one list both languages read. `core/wire_names.json` is the source; this package
# carries a byte-identical copy (package data, so an installed trainer has it), which a test keeps equal.
WIRE_NAMES: dict[str, Any] = json.loads((Path(__file__).resolve().parent / "wire_names.json").read_text())
ACTIVITY_NAME: str = WIRE_NAMES["activities"]["updatePolicy"]
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

    def config(self, defaults: TrainerConfig | None = None) -> TrainerConfig:
        try:
            return (defaults or TrainerConfig()).replace(**self.trainer)
        except ValueError as e:
            raise ContractError(f"request.trainer: {e}") from None


def decode_update_request(obj: Any) -> UpdateRequest:
    w = "request"
    o = _obj(obj, w, {"runId", "iteration", "batch", "base", "parent", "storeUrl", "trainer"})
    run_id = _str(o["runId"], f"{w}.runId")
    if "/" in run_id or run_id in (".", "..") or not _name_segment_ok(run_id):
        raise ContractError(f"{w}.runId is {run_id!r}, expected one name segment [A-Za-z0-9][A-Za-z0-9._-]*")
    iteration = _int(o["iteration"], f"{w}.iteration", lo=0)
    batch = _ref(o["batch"], f"{w}.batch")
    b = _obj(o["base"], f"{w}.base", {"kind", "path"})
    kind = b["kind"]
    if kind not in ("hf", "gguf"):
        raise ContractError(f"{w}.base.kind is {_short(kind)}, expected 'hf' or 'gguf'")
    base = BaseModel(kind, _str(b["path"], f"{w}.base.path"))
    parent = None if o["parent"] is None else _ref(o["parent"], f"{w}.parent")
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
    req = UpdateRequest(run_id, iteration, batch, base, parent, store_url, trainer)
    req.config()  # range checks, with the field named
    return req


def _name_segment_ok(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) is not None


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
    files = o["files"]
    if not isinstance(files, dict) or not files:
        raise ContractError(f"{w}.files is {_short(files)}, expected an object of file name -> ref")
    for name, ref in files.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ContractError(f"{w}.files has the file name {name!r}, expected a plain file name")
        _ref(ref, f"{w}.files[{name!r}]")
    _metrics(o["metrics"], f"{w}.metrics")
    for k in ("trainer", "stats"):
        if not isinstance(o[k], dict):
            raise ContractError(f"{w}.{k} is {_short(o[k])}, expected an object")
    _str(o["createdAt"], f"{w}.createdAt")
    return o
