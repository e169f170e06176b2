"""Loading the base model and tokenizer (a GGUF is read through transformers once and cached beside it as
dequantised safetensors), and copying a checkpoint's adapter files out of the artifact store, verified.
Used by the policy server and the trainer alike."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chat import BadRequest

if TYPE_CHECKING:
    from .store import ArtifactStore

log = logging.getLogger("cm2_trainer.models")


CHECKPOINT_SCHEMA = "cm2.checkpoint/v1"
# Manifests whose adapter files serve: an RL checkpoint, or a LoRA SFT checkpoint (the same adapter file names).
ADAPTER_SCHEMAS = (CHECKPOINT_SCHEMA, "cm2.sft-checkpoint/v1")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def materialize_checkpoint(store: ArtifactStore | str, ref_json: Any, dest: Path) -> None:
    """Copy the adapter files named by a checkpoint manifest (RL or LoRA SFT, ``ADAPTER_SCHEMAS``) into ``dest``,
    verifying each blob. ``store`` is a store or its URL (``store.open_store``)."""
    from .store import ArtifactStore, InvalidRef, InvalidStoreUrl, Ref, StoreError, open_store

    try:
        ref = Ref.from_json(ref_json, where="checkpoint")
    except InvalidRef as e:
        raise BadRequest(str(e), "checkpoint") from None
    if not isinstance(store, ArtifactStore):
        try:
            store = open_store(store)
        except InvalidStoreUrl as e:
            raise BadRequest(str(e), "store_url") from None
    try:
        manifest = store.get_json(ref)
    except StoreError as e:
        raise BadRequest(f"Checkpoint {ref.uri}: {e}", "checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(f"Checkpoint {ref.uri} is not a JSON manifest", "checkpoint") from None
    if not isinstance(manifest, dict):
        raise BadRequest(f"Checkpoint {ref.uri} is not a JSON object", "checkpoint")
    schema = manifest.get("schema")
    if schema is not None and schema not in ADAPTER_SCHEMAS:
        expected = " or ".join(repr(s) for s in ADAPTER_SCHEMAS)
        raise BadRequest(f"Checkpoint {ref.uri} has schema {schema!r}, expected {expected}", "checkpoint")
    files = manifest.get("files")
    if files is None and isinstance(manifest.get("adapter"), dict):
        files = manifest["adapter"].get("files")
    if not isinstance(files, dict) or "adapter_config.json" not in files:
        raise BadRequest(f"Checkpoint {ref.uri} has no files mapping with adapter_config.json", "checkpoint")
    for name, fref in files.items():
        if not isinstance(name, str) or not _FILE_NAME_RE.match(name):
            raise BadRequest(f"Checkpoint {ref.uri} names file {name!r}, expected a plain file name", "checkpoint")
        if name != "adapter_config.json" and not name.startswith("adapter_model."):
            continue  # e.g. the optimizer state: not needed to serve
        try:
            store.copy_to(Ref.from_json(fref, where=f"files[{name!r}]"), dest / name)
        except (InvalidRef, StoreError) as e:
            raise BadRequest(f"Checkpoint {ref.uri} file {name}: {e}", "checkpoint") from None


def _gguf_cache(p: Path, kind: str, cache_dir: str | None) -> tuple[Path, str]:
    st = p.stat()
    return (
        Path(cache_dir) if cache_dir else p.parent / ".cache" / f"{p.name}.{kind}"
    ), f"{st.st_size}-{int(st.st_mtime)}"


def _cached(cache: Path, key: str) -> bool:
    try:
        return (cache / "cm2-source.txt").read_text() == key
    except OSError:
        return False


def _save_cache(save: Any, cache: Path, key: str) -> None:
    """``save(dir)`` into a staging directory, then rename it into place (a crash leaves no half cache)."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".staging-"))
        save(str(tmp))
        (tmp / "cm2-source.txt").write_text(key)
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError as e:  # a read-only model directory only costs the next start the conversion again
        log.warning("Could not cache %s: %s", cache, e)


def _save_dequantized(model: Any, directory: str) -> None:
    # transformers refuses save_pretrained on a model read from GGUF; its weights are plain tensors by now.
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    save_model(model, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def load_tokenizer(model_path: str, cache_dir: str | None = None) -> Any:
    """Tokenizer of an HF directory/id, or of a GGUF file. Converting a GGUF vocabulary takes about a
    minute, so the result is cached (``<gguf dir>/.cache/<file>.tokenizer/`` unless ``cache_dir``), keyed by
    the file's size and mtime."""
    from transformers import AutoTokenizer

    p = Path(model_path)
    if p.suffix.lower() != ".gguf":
        return AutoTokenizer.from_pretrained(model_path)
    cache, key = _gguf_cache(p, "tokenizer", cache_dir)
    if _cached(cache, key):
        return AutoTokenizer.from_pretrained(str(cache))
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    _save_cache(tok.save_pretrained, cache, key)
    return tok


def load_base_model(model_path: str, dtype: str = "float32", cache_dir: str | None = None) -> Any:
    """An HF causal LM from a directory/id, or dequantised from a GGUF file. Reading a GGUF through
    transformers takes about a minute on 2 cores, so the dequantised float32 weights are cached as
    safetensors (``<gguf dir>/.cache/<file>.model/``, ~540 MB for SmolLM2-135M) and loaded from there."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float64": torch.float64,
    }[dtype]
    p = Path(model_path)
    if p.suffix.lower() == ".gguf":
        cache, key = _gguf_cache(p, "model", cache_dir)
        if _cached(cache, key):
            model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
            # Dequantised on load: drop the marker so peft treats it as the plain model it now is (as update.py).
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            _save_cache(lambda d: _save_dequantized(model, d), cache, key)
            model = model.to(torch_dtype)  # type: ignore[arg-type]  # transformers' stub types .to() badly
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    model.eval()
    return model
