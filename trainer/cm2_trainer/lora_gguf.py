"""Convert a peft LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) into a llama.cpp GGUF
LoRA adapter for a given GGUF base model, so that ``llama-server --lora`` serves exactly the policy the trainer
produced.

What llama.cpp expects (read from its ``src/llama-adapter.cpp``, llama.cpp release shipped in node-llama-cpp
3.22.1): ``general.type = "adapter"``, ``general.architecture`` equal to the base model's, ``adapter.type =
"lora"``, ``adapter.lora.alpha`` (f32), and for each adapted weight ``W`` (numpy shape ``[out, in]``) two tensors
``<gguf name of W>.lora_a`` of shape ``[r, in]`` and ``<gguf name of W>.lora_b`` of shape ``[out, r]``, i.e. peft's
``lora_A.weight`` and ``lora_B.weight`` as they are. The delta is ``scale * B @ A`` with
``scale = alpha / r`` when alpha is non-zero, else 1.

Choices:
- **peft's scaling is folded into B** (``alpha / r``, ``alpha / sqrt(r)`` for rsLoRA, per-module rank and alpha
  patterns included) and ``adapter.lora.alpha`` is written as 0, so llama.cpp applies B @ A unscaled and every
  peft scaling rule maps exactly.
- **Names** come from the ``gguf`` package's tensor-name map for the base model's architecture (the same table
  llama.cpp's converters use), so any architecture that package knows maps without a table of ours.
- **Q/K row order**: llama.cpp's HF converter permutes the rows of ``q_proj`` and ``k_proj`` for the ``llama``
  architecture family (HF's rotate-half RoPE layout to GGML's interleaved one), and transformers undoes that when
  it reads a GGUF. The rows of W are the rows of B, so B gets the same permutation (A is untouched).
- Refused with a clear error: DoRA, embedding/``lm_head`` adapters, modules the map does not know, and a base
  tensor that is missing or has another shape (the adapter was trained on another model).

Used by the policy server's llama.cpp engine (``serve.py``) each time a new policy version is published.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Architectures whose HF -> GGUF conversion permutes the q/k projection rows (llama.cpp's LlamaModel family).
PERMUTED_QK_ARCHS = frozenset({"llama", "mistral", "granite", "granitemoe"})
_MODULE_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class LoraConversionError(ValueError):
    """The adapter cannot be served by this base model through llama.cpp; the message says why."""


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to q/k weights: per head, interleave the two halves."""
    out = w.shape[0]
    if out % (2 * n_head):
        raise LoraConversionError(f"cannot permute {out} rows into {n_head} heads")
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class BaseInfo:
    """What the conversion needs from the GGUF base: architecture, head counts, tensor shapes (numpy order)."""

    def __init__(self, gguf_path: str | os.PathLike[str]) -> None:
        import gguf

        r = gguf.GGUFReader(str(gguf_path), "r")

        def field(name: str) -> Any:
            f = r.get_field(name)
            return None if f is None else f.contents()

        self.arch: str = field("general.architecture")
        if not isinstance(self.arch, str):
            raise LoraConversionError(f"{gguf_path} has no general.architecture")
        self.n_layers = int(field(f"{self.arch}.block_count") or 0)
        self.n_head = int(field(f"{self.arch}.attention.head_count") or 0)
        self.n_head_kv = int(field(f"{self.arch}.attention.head_count_kv") or self.n_head)
        # GGUF stores dims fastest-first; numpy order is reversed.
        self.shapes: dict[str, tuple[int, ...]] = {
            t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in r.tensors
        }


def _gguf_name(module: str, tmap: Any) -> str:
    name = tmap.get_name(module)
    if name is None:
        raise LoraConversionError(f"module {module!r} has no llama.cpp tensor name for this architecture")
    return name + ".weight"


def convert_adapter(
    adapter_dir: str | os.PathLike[str],
    base_gguf: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    base: BaseInfo | None = None,
) -> dict[str, Any]:
    """Write ``out_path`` (atomically) from the peft adapter in ``adapter_dir``; returns a summary.

    One pass over the adapter's tensors with its checks (names, shapes, rank, alpha) inline: long, but read top
    to bottom in the order the GGUF file is written.
    """
    import gguf
    from safetensors.numpy import load_file

    adir = Path(adapter_dir)
    try:
        cfg = json.loads((adir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LoraConversionError(f"{adir}/adapter_config.json: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoraConversionError(f"adapter type {cfg.get('peft_type')!r}, only LORA converts")
    if cfg.get("use_dora"):
        raise LoraConversionError("DoRA adapters do not convert to llama.cpp LoRA")
    weights_file = adir / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise LoraConversionError(f"{adir} has no adapter_model.safetensors")
    tensors = load_file(str(weights_file))

    base = base or BaseInfo(base_gguf)
    tmap = (
        gguf.get_tensor_name_map(gguf.MODEL_ARCH[base.arch.upper()], base.n_layers)
        if base.arch.upper() in gguf.MODEL_ARCH.__members__
        else None
    )
    if tmap is None:
        raise LoraConversionError(f"architecture {base.arch!r} is unknown to the gguf package")

    r_default = int(cfg.get("r", 8))
    alpha_default = float(cfg.get("lora_alpha", r_default))
    rank_pattern: dict[str, int] = cfg.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}

    def pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
        for key, v in patterns.items():  # peft matches a pattern key against the end of the module name
            if re.fullmatch(rf"(.*\.)?{key}", module):
                return float(v)
        return default

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        m = _MODULE_RE.match(key)
        if m is None:
            raise LoraConversionError(
                f"tensor {key!r} is not a LoRA A/B weight (embedding or bias adapters do not convert)"
            )
        pairs.setdefault(m.group("module"), {})[m.group("ab")] = t

    writer_tensors: list[tuple[str, np.ndarray]] = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise LoraConversionError(f"module {module!r} has only lora_{''.join(ab)}")
        if module.endswith(("embed_tokens", "lm_head")):
            raise LoraConversionError(f"module {module!r}: embedding/output adapters are not supported")
        name = _gguf_name(module, tmap)
        shape = base.shapes.get(name)
        a = ab["A"].astype(np.float32)
        b = ab["B"].astype(np.float32)
        if shape is None:
            raise LoraConversionError(f"module {module!r} maps to {name!r}, which the base model does not have")
        if len(shape) != 2 or shape != (b.shape[0], a.shape[1]) or a.shape[0] != b.shape[1]:
            raise LoraConversionError(
                f"module {module!r}: LoRA A {a.shape} and B {b.shape} do not fit base tensor {name} {shape} "
                "(was the adapter trained on another base model?)"
            )
        r = a.shape[0]
        alpha = pattern_value(alpha_pattern, module, alpha_default)
        if int(pattern_value(rank_pattern, module, r_default)) != r:
            raise LoraConversionError(f"module {module!r}: rank {r} differs from the config's")
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        b = b * np.float32(scaling)
        if base.arch in PERMUTED_QK_ARCHS:
            if module.endswith("q_proj"):
                b = _permute_rows(b, base.n_head)
            elif module.endswith("k_proj"):
                b = _permute_rows(b, base.n_head_kv)
        writer_tensors.append((name + ".lora_a", np.ascontiguousarray(a)))
        writer_tensors.append((name + ".lora_b", np.ascontiguousarray(b)))
    if not writer_tensors:
        raise LoraConversionError(f"{weights_file} holds no LoRA weights")

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, base.arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: llama.cpp applies B @ A as is (scaling is in B)
        for name, arr in writer_tensors:
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(out), "modules": len(pairs), "arch": base.arch}
