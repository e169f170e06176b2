"""Policy server: the base model plus the live LoRA adapter behind an OpenAI-compatible chat-completions API.

Endpoints (127.0.0.1 by default, standard-library ``ThreadingHTTPServer``: one process, no extra dependency,
and generation is serialised anyway, so an async framework would buy nothing here):

    POST /v1/chat/completions     messages, tools, temperature/top_p/max_tokens/seed/stop, return_token_ids
    POST /v1/load_lora_adapter    {lora_name, lora_path | checkpoint + store_root, version} -> live version
    POST /v1/unload_lora_adapter  back to the base model (version from the request, default the start version)
    GET  /v1/policy_version       {"version", "lora_name", "loaded_at"}
    GET  /v1/models, GET /health

Two engines generate (``--engine``): **llama.cpp** (default for a GGUF base when ``llama-server`` is built:
a child ``llama-server`` fed token ids, adapters converted to GGUF LoRA by ``lora_gguf.py``, several requests
batched at once; ~40 tokens/s per stream on 2 cores) and **transformers** (any HF model, in this process, one
request at a time; ~5-10 tokens/s on 2 cores, the fallback). Either way this process renders the prompt, parses
tool calls and owns the version.

Every completion carries the version of the adapter that produced it, in the ``x-cm2-policy-version`` header
and as ``system_fingerprint``. Generations share a lock that an adapter swap takes alone; the adapter is
staged (files fetched and verified) before, so a completion runs wholly on one version and a new version is
live for every request that starts after ``load_lora_adapter`` returns.

Prompts are rendered with the tokenizer's chat template, passing ``tools``. A template that ignores tools
(SmolLM2's ChatML) is replaced by :data:`TOOL_CHAT_TEMPLATE`, which renders exactly like SmolLM2's without
tools and adds Hermes-style tool descriptions and ``<tool_call>`` blocks with them; the trainer must render
with the same template (:func:`serving_chat_template`). Tool calls are parsed from ``<tool_call>{json}
</tool_call>`` blocks in the output.

Checkpoint refs: the ref points at the trainer's ``cm2.checkpoint/v1`` manifest in the artifact store
(``store.py``, ``update.py``); its ``files`` map names to refs, and ``adapter_config.json`` and
``adapter_model.*`` are verified (size, sha256) while they are copied to a staging directory.

A GGUF base is read through transformers once and cached beside it (``.cache/<file>.tokenizer/``, 3 MB, and
``.cache/<file>.model/``, dequantised float32 safetensors, ~540 MB for SmolLM2-135M): the first start takes
about two minutes on 2 cores, later ones a few seconds.

Run: ``python -m cm2_trainer.serve --model .cm2/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8765``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("cm2_trainer.serve")

POLICY_VERSION_HEADER = "x-cm2-policy-version"
MAX_BODY_BYTES = 16 * 1024 * 1024
CHECKPOINT_SCHEMA = "cm2.checkpoint/v1"
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# ChatML with tools. Without tools it renders exactly like SmolLM2-Instruct's own template (default system
# message included); with tools it appends the tool block to the system message, renders assistant tool
# calls as <tool_call> blocks and tool results as `tool` turns. Prefix-stable: no message is rendered
# differently because of later ones.
TOOL_CHAT_TEMPLATE = (
    "{%- set ns = namespace(sys=none, start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.sys = messages[0]['content'] -%}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{{- ns.sys if ns.sys is not none else 'You are a helpful assistant.' -}}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " ~ 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' ~ (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    " ~ '<tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' ~ \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' -}}'
    "{%- elif ns.sys is not none -%}"
    "{{- '<|im_start|>system\\n' ~ ns.sys ~ '<|im_end|>\\n' -}}"
    "{%- elif messages -%}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ (message['content'] or '') -}}"
    "{%- if message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call.get('function') else call -%}"
    "{{- ('\\n' if (message['content'] or not loop.first) else '') ~ '<tool_call>\\n' -}}"
    "{{- {'name': fn['name'], 'arguments': fn['arguments']} | tojson -}}"
    "{{- '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "cm2_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}},
}


def serving_chat_template(tokenizer: Any) -> str | None:
    """The chat template the policy server renders with: None (the tokenizer's own) when that one renders
    ``tools``, else :data:`TOOL_CHAT_TEMPLATE`. The trainer passes the same value to ``render_sample``."""
    msgs = [{"role": "user", "content": "hi"}]
    try:
        with_tools = tokenizer.apply_chat_template(
            msgs, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
        without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # no template, or one that rejects tools
        return TOOL_CHAT_TEMPLATE
    return TOOL_CHAT_TEMPLATE if "cm2_probe_tool" not in with_tools or with_tools == without else None


# -- tool-call parsing ----------------------------------------------------------------------------------------
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split model text into content and OpenAI tool calls.

    Each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block whose JSON parses and has a string
    ``name`` becomes a call (``arguments`` re-serialised as a JSON string, ``parameters`` accepted as an
    alias); a final block cut before its closing tag counts if its JSON is complete. Other blocks stay in the
    content. With calls, the content is what remains, stripped.
    """
    calls: list[dict[str, Any]] = []

    def repl(m: re.Match[str]) -> str:
        try:
            obj = json.loads(m.group(1))
        except json.JSONDecodeError:
            return m.group(0)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return m.group(0)
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
        return ""

    content = _TOOL_CALL_RE.sub(repl, text)
    return (content.strip() if calls else content), calls


# -- request validation ---------------------------------------------------------------------------------------
class BadRequest(ValueError):
    """Maps to HTTP 400; the message names the field and the value."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int | None
    seed: int | None
    stop: list[str]


def _num(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{key} is {v!r}, expected a number in [{lo}, {hi}]", key)
    return float(v)


def _opt_int(body: dict[str, Any], key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise BadRequest(f"{key} is {v!r}, expected an integer{f' >= {lo}' if lo is not None else ''}", key)
    return v


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """OpenAI sampling fields (plus vLLM's ``top_k``); defaults are OpenAI's (temperature 1, top_p 1)."""
    if body.get("n") not in (None, 1):
        raise BadRequest(f"n is {body.get('n')!r}, only 1 is supported", "n")
    if body.get("stream"):
        raise BadRequest("stream is not supported", "stream")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 16:
        stops = list(stop)
    else:
        raise BadRequest(f"stop is {stop!r}, expected a string or a list of up to 16 non-empty strings", "stop")
    top_k = _opt_int(body, "top_k", -1)
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1)
    top_p = _num(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise BadRequest("top_p is 0, expected a number in (0, 1]", "top_p")
    return Sampling(
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        top_k=0 if top_k is None or top_k < 0 else top_k,
        max_tokens=max_tokens,
        seed=_opt_int(body, "seed"),
        stop=stops,
    )


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Check OpenAI messages and return copies in the shape chat templates expect (text parts joined,
    ``content: null`` -> "", tool-call arguments parsed to objects where they are JSON objects)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(messages):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{w} is {type(m).__name__}, expected an object", w)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"{w}.role is {role!r}, expected system, user, assistant or tool", f"{w}.role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise BadRequest(f"{w}.content[{j}] is not a text part; only text is supported", f"{w}.content")
                parts.append(p["text"])
            content = "".join(parts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise BadRequest(f"{w}.content is {type(content).__name__}, expected a string", f"{w}.content")
        msg: dict[str, Any] = {"role": role, "content": content}
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list):
                raise BadRequest(f"{w}.tool_calls is not an array", f"{w}.tool_calls")
            norm = []
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRequest(f"{w}.tool_calls[{j}].function.name is missing", f"{w}.tool_calls")
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    try:
                        parsed = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        parsed = None
                    if isinstance(parsed, dict):
                        args = parsed
                norm.append(
                    {
                        "id": c.get("id") or f"call_{j}",
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": args},
                    }
                )
            msg["tool_calls"] = norm
        if role == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = str(m["tool_call_id"])
        out.append(msg)
    return out


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", "tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if (
            not isinstance(t, dict)
            or t.get("type") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise BadRequest(f"tools[{i}] is not a function tool with a name", f"tools[{i}]")
    return copy.deepcopy(tools)


# -- model + adapters -----------------------------------------------------------------------------------------
def _version_str(v: Any) -> str:
    return str(v)


def materialize_checkpoint(store_root: str | os.PathLike[str], ref_json: Any, dest: Path) -> None:
    """Copy the adapter files named by a checkpoint manifest into ``dest``, verifying each blob."""
    from .store import InvalidRef, Ref, Store, StoreError

    try:
        ref = Ref.from_json(ref_json, where="checkpoint")
    except InvalidRef as e:
        raise BadRequest(str(e), "checkpoint") from None
    store = Store(store_root)
    try:
        manifest = store.get_json(ref)
    except StoreError as e:
        raise BadRequest(f"Checkpoint {ref.uri}: {e}", "checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(f"Checkpoint {ref.uri} is not a JSON manifest", "checkpoint") from None
    if not isinstance(manifest, dict):
        raise BadRequest(f"Checkpoint {ref.uri} is not a JSON object", "checkpoint")
    schema = manifest.get("schema")
    if schema is not None and schema != CHECKPOINT_SCHEMA:
        raise BadRequest(f"Checkpoint {ref.uri} has schema {schema!r}, expected {CHECKPOINT_SCHEMA!r}", "checkpoint")
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


class QueueFull(Exception):
    pass


class EngineError(RuntimeError):
    """The generation engine failed (maps to HTTP 500 with the reason)."""


class _SwapLock:
    """Many generations at once, or one adapter swap alone; a waiting swap holds back new generations, so a
    publish is never starved by a steady stream of rollouts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_shared(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float] | None
    seconds: float


class TorchEngine:
    """transformers + peft in this process: any HF causal LM, one generation at a time. The path for a GPU host
    without vLLM/SGLang, and the fallback when llama.cpp's server is not built."""

    name = "transformers"
    concurrency = 1

    def __init__(self, model: Any, tokenizer: Any, eot_ids: list[int], pad_id: int) -> None:
        self.base = model
        self.peft: Any = None  # PeftModel once an adapter was loaded
        self.tokenizer = tokenizer
        self.eot_ids = eot_ids
        self.pad_id = pad_id
        self._adapter: str | None = None  # internal peft adapter name of the newest adapter
        self._live = False  # whether generation uses it (False: the base model)
        self._counter = 0
        self._lock = threading.Lock()
        cfg = getattr(model, "config", None)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 4096)

    def activate(self, staging: Path, lora_name: str) -> None:
        from peft import PeftModel

        self._counter += 1
        internal = f"a{self._counter}"
        old = self._adapter
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.base, str(staging), adapter_name=internal, is_trainable=False
                )
            else:
                self.peft.load_adapter(str(staging), adapter_name=internal, is_trainable=False)
            self.peft.set_adapter(internal)
        except Exception as e:
            if self.peft is not None and internal in getattr(self.peft, "peft_config", {}):
                self.peft.delete_adapter(internal)
                if old is not None:
                    self.peft.set_adapter(old)
            raise BadRequest(f"Adapter {lora_name!r} does not fit the base model: {type(e).__name__}: {e}") from None
        if old is not None:
            self.peft.delete_adapter(old)
        self.peft.eval()
        self._adapter = internal
        self._live = True

    def deactivate(self) -> None:
        self._live = False  # the adapter stays loaded, disabled, until the next one replaces it

    def generate(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, coalesce: bool = False
    ) -> Generation:
        import torch

        with self._lock:
            if s.seed is not None:
                torch.manual_seed(s.seed)
            input_ids = torch.tensor([prompt_ids], dtype=torch.long)
            kw: dict[str, Any] = dict(
                max_new_tokens=max_new,
                eos_token_id=self.eot_ids,
                pad_token_id=self.pad_id,
                attention_mask=torch.ones_like(input_ids),
                return_dict_in_generate=True,
                output_logits=want_logprobs,
            )
            if s.temperature > 0:
                kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if s.stop:
                kw.update(stop_strings=s.stop, tokenizer=self.tokenizer)
            started = time.perf_counter()
            with torch.inference_mode():
                if self.peft is None:
                    out = self.base.generate(input_ids, **kw)
                elif self._live:
                    out = self.peft.generate(input_ids=input_ids, **kw)
                else:  # the base model's layers are wrapped by peft: disable the adapter
                    with self.peft.disable_adapter():
                        out = self.peft.generate(input_ids=input_ids, **kw)
            seconds = time.perf_counter() - started
        new = [int(t) for t in out.sequences[0, len(prompt_ids) :].tolist()]
        logprobs = None
        if want_logprobs:
            logprobs = [
                torch.log_softmax(step[0].float(), dim=-1)[tok].item()
                for step, tok in zip(out.logits, new, strict=False)
            ]
        return Generation(new, logprobs, seconds)

    def close(self) -> None:
        pass


def _default_llama_server() -> str | None:
    """$CM2_LLAMA_SERVER, else the checked launcher that `deno task setup` writes once the build has passed its
    smoke test on this machine (never the raw build: it may crash on this CPU, see llama_server_check.ts)."""
    env = os.environ.get("CM2_LLAMA_SERVER")
    if env:
        return env
    p = Path(__file__).resolve().parents[2] / ".cm2" / "llama.cpp" / "llama-server"
    return str(p) if p.is_file() else None


_SIGNAL_MEANING = {
    "SIGILL": "illegal instruction: the binary uses a CPU instruction this machine cannot run "
    "(run `deno task setup` to check the build on this CPU)",
    "SIGKILL": "killed: out of memory? (see `dmesg`)",
    "SIGSEGV": "segmentation fault: a crash in native code",
    "SIGBUS": "bus error: a mapped file changed or the disk is full?",
    "SIGABRT": "aborted: an assertion or uncaught exception (see the log)",
}


def describe_returncode(rc: int) -> str:
    """A child's return code in words: 'SIGILL: illegal instruction: …' for a signal, else 'exit code N'."""
    import signal

    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
        return f"{name}: {_SIGNAL_MEANING.get(name, 'killed by a signal')}"
    return f"exit code {rc}"


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and HTTP requests run on short-lived
# threads: children are therefore forked from this one long-lived thread.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm2-spawner")


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux): SIGTERM when we die
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; close() and atexit stop it otherwise
        pass


class _Batch:
    """Identical first-step requests sent to llama-server as one ``n_cmpl`` request."""

    def __init__(self) -> None:
        self.size = 0
        self.closed = False
        self.done = threading.Event()
        self.results: list[Generation] = []
        self.error: BaseException | None = None


class LlamaCppEngine:
    """llama.cpp's ``llama-server`` as the generation engine for a GGUF base: this process keeps the OpenAI
    front end (rendering with the HF tokenizer, tool-call parsing, versions) and sends **token ids** to the
    child's ``/completion`` (so the prompt is exactly the trainer's rendering and the completion comes back as
    the ids the policy sampled). A new adapter is converted to a GGUF LoRA (``lora_gguf.py``) and a fresh child
    is started with ``--lora`` before the old one stops (a 135M model loads in about a second), so no request
    ever runs on a half-swapped model. Several requests run at once (``--parallel`` slots, continuous
    batching): the G rollouts of a group share the decode steps.

    Sampling is made plain: llama.cpp's default ``min_p`` 0.05 and other extra samplers are turned off, so the
    policy samples from softmax(logits / T) under top-p/top-k exactly as the trainer's loss assumes.
    """

    name = "llama.cpp"

    def __init__(
        self,
        binary: str,
        gguf_path: str,
        *,
        threads: int = 2,
        parallel: int = 4,
        ctx_per_slot: int = 4096,
        work_dir: str | None = None,
        log_path: str | None = None,
        start_timeout_s: float = 120.0,
        coalesce_window_s: float = 1.5,
    ) -> None:
        from .lora_gguf import BaseInfo

        self.binary = binary
        self.gguf = str(gguf_path)
        self.threads = threads
        self.concurrency = parallel
        self.max_context = ctx_per_slot
        self.start_timeout_s = start_timeout_s
        self.base_info = BaseInfo(gguf_path)
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="cm2-llama-policy-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path) if log_path else self.work_dir / "llama-server.log"
        self.eot_ids: list[int] = []  # set by PolicyModel from the tokenizer
        self.coalesce_window_s = coalesce_window_s
        self._batch_lock = threading.Lock()
        self._batches: dict[Any, _Batch] = {}
        self._counter = 0
        self._proc: Any = None
        self._port = 0
        self._lora: Path | None = None
        self._start(None)

    # -- child process ----------------------------------------------------------------------------------------
    def _spawn(self, lora: Path | None) -> tuple[Any, int]:
        import subprocess

        port = free_port()
        args = [
            self.binary,
            "-m",
            self.gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(self.max_context * self.concurrency),
            "-np",
            str(self.concurrency),
            # One KV stream per slot: with a unified cache every decode step of every rollout attends over
            # the cells of all rollouts (4x the attention work once a group's rollouts diverge).
            "--no-kv-unified",
            "-t",
            str(self.threads),
            "--cache-ram",
            "0",
            "--no-webui",
            "--metrics",
        ]
        if lora is not None:
            args += ["--lora", str(lora)]
        logf = open(self.log_path, "ab")
        try:
            proc = _SPAWNER.submit(
                subprocess.Popen,
                args,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            ).result()
        finally:
            logf.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EngineError(
                    f"llama-server died while starting ({describe_returncode(proc.returncode)}); "
                    f"last log lines:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, port
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        _stop(proc)
        raise EngineError(
            f"llama-server did not answer /health within {self.start_timeout_s:.0f} s; "
            f"last log lines:\n{_tail(self.log_path)}"
        )

    def _start(self, lora: Path | None) -> None:
        proc, port = self._spawn(lora)
        old, old_lora = self._proc, self._lora
        self._proc, self._port, self._lora = proc, port, lora
        if old is not None:
            _stop(old)
        if old_lora is not None and old_lora != lora:
            old_lora.unlink(missing_ok=True)

    # -- engine interface -------------------------------------------------------------------------------------
    def activate(self, staging: Path, lora_name: str) -> None:
        from .lora_gguf import LoraConversionError, convert_adapter

        self._counter += 1
        out = self.work_dir / f"adapter-{self._counter}.gguf"
        try:
            convert_adapter(staging, self.gguf, out, base=self.base_info)
        except LoraConversionError as e:
            raise BadRequest(f"Adapter {lora_name!r} does not fit the base model: {e}") from None
        try:
            self._start(out)
        except EngineError:
            out.unlink(missing_ok=True)
            raise

    def deactivate(self) -> None:
        self._start(None)

    def generate(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, coalesce: bool = False
    ) -> Generation:
        """One completion. With ``coalesce`` (the first step of an episode), identical requests arriving within
        ``coalesce_window_s`` (the G rollouts of a group) become one ``n_cmpl`` request: llama-server reads the
        shared prompt once and copies its KV cache to the other slots, instead of reading it G times."""
        if not coalesce or self.coalesce_window_s <= 0 or self.concurrency < 2:
            return self._request(prompt_ids, s, max_new, want_logprobs, 1)[0]
        key = (tuple(prompt_ids), s.temperature, s.top_p, s.top_k, tuple(s.stop), max_new, want_logprobs)
        with self._batch_lock:
            batch = self._batches.get(key)
            leader = batch is None or batch.closed or batch.size >= self.concurrency
            if leader:
                batch = _Batch()
                self._batches[key] = batch
            assert batch is not None
            index = batch.size
            batch.size += 1
        if leader:
            time.sleep(self.coalesce_window_s)
            with self._batch_lock:
                batch.closed = True
                if self._batches.get(key) is batch:
                    del self._batches[key]
            try:
                batch.results = self._request(prompt_ids, s, max_new, want_logprobs, batch.size)
            except BaseException as e:  # every member gets the error
                batch.error = e
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    def _request(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, n: int
    ) -> list[Generation]:
        body: dict[str, Any] = {
            "prompt": prompt_ids,
            "n_predict": max_new,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "top_n_sigma": -1.0,
            "seed": s.seed if s.seed is not None else -1,
            "stop": s.stop,
            "return_tokens": True,
            "cache_prompt": True,
            "n_probs": 1 if want_logprobs else 0,
            "stream": False,
            "n_cmpl": n,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{self._port}/completion",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=3600) as r:
                raw = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise EngineError(f"llama-server answered {e.code}: {e.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            proc = self._proc
            rc = proc.poll() if proc is not None else None
            how = f"it died: {describe_returncode(rc)}" if rc is not None else f"unreachable: {e}"
            raise EngineError(f"llama-server failed ({how}); last log lines:\n{_tail(self.log_path)}") from None
        seconds = time.perf_counter() - started
        outs = sorted(raw, key=lambda o: int(o.get("index", 0))) if isinstance(raw, list) else [raw]
        if len(outs) != n:
            raise EngineError(f"llama-server returned {len(outs)} completions for n_cmpl={n}")
        return [self._generation(o, want_logprobs, seconds) for o in outs]

    def _generation(self, out: dict[str, Any], want_logprobs: bool, seconds: float) -> Generation:
        ids = [int(t) for t in out.get("tokens") or []]
        probs = out.get("completion_probabilities") or []
        logprobs = [float(p["logprob"]) for p in probs] if want_logprobs else None
        if out.get("stop_type") == "eos" and (not ids or ids[-1] not in self.eot_ids):
            # Should llama-server leave the end-of-generation token out of `tokens`: the policy did sample it,
            # and the trainer scores it (it is what teaches the policy to stop), so it goes back on.
            eog = probs[len(ids)]["id"] if want_logprobs and len(probs) > len(ids) else self.eot_ids[0]
            ids.append(int(eog))
            if logprobs is not None and len(logprobs) < len(ids):
                logprobs.append(0.0)
        return Generation(ids, logprobs, seconds)

    def close(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the child llama-server's; also used by tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: Any) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class PolicyModel:
    """The live policy: an engine (the base model), the adapter version it serves, and the OpenAI front end.
    All generation goes through :meth:`generate`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        version: Any = 0,
        name: str = "policy",
        max_context: int | None = None,
        max_queue: int = 16,
        chat_template: str | None = None,
        engine: Any = None,
    ) -> None:
        from .render import end_of_turn_ids

        self.tokenizer = tokenizer
        self.name = name
        self.chat_template = chat_template if chat_template is not None else serving_chat_template(tokenizer)
        self.base_version = version
        self.version: Any = version
        self.lora_name: str | None = None
        self.loaded_at = time.time()
        self.eot_ids = sorted(end_of_turn_ids(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_ids[0]
        self.engine = engine if engine is not None else TorchEngine(model, tokenizer, self.eot_ids, self.pad_id)
        self.engine.eot_ids = self.eot_ids
        self.max_context = max_context or self.engine.max_context
        self._swap = _SwapLock()  # generations (shared) and adapter swaps (exclusive)
        self._admin = threading.Lock()  # one adapter load at a time
        self._slots = threading.BoundedSemaphore(self.engine.concurrency + max_queue)

    @property
    def base(self) -> Any:
        """The in-process base model (TorchEngine only)."""
        return self.engine.base

    # -- adapters ---------------------------------------------------------------------------------------------
    def load_adapter(
        self,
        lora_name: str,
        version: Any,
        *,
        lora_path: str | None = None,
        checkpoint: Any = None,
        store_root: str | None = None,
    ) -> dict[str, Any]:
        """Stage an adapter (outside the swap lock), then make it live atomically."""
        from peft import PeftConfig

        with self._admin:
            staging = Path(tempfile.mkdtemp(prefix="cm2-adapter-"))
            try:
                if lora_path is not None:
                    src = Path(lora_path)
                    if not (src / "adapter_config.json").is_file():
                        raise BadRequest(f"lora_path {lora_path!r} has no adapter_config.json", "lora_path")
                    for f in src.iterdir():
                        if f.is_file():
                            shutil.copy2(f, staging / f.name)
                else:
                    if store_root is None:
                        raise BadRequest(
                            "checkpoint needs store_root (or start the server with --store-root)", "store_root"
                        )
                    materialize_checkpoint(store_root, checkpoint, staging)
                try:
                    PeftConfig.from_pretrained(str(staging))
                except Exception as e:
                    raise BadRequest(f"Adapter {lora_name!r} has an unreadable adapter_config.json: {e}") from None
                self._swap.acquire_exclusive()
                try:
                    self.engine.activate(staging, lora_name)
                    self.lora_name = lora_name
                    self.version = version
                    self.loaded_at = time.time()
                    return self.status()
                finally:
                    self._swap.release_exclusive()
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def unload_adapter(self, version: Any = None) -> dict[str, Any]:
        """Serve the base model again."""
        with self._admin:
            self._swap.acquire_exclusive()
            try:
                self.engine.deactivate()
                self.lora_name = None
                self.version = self.base_version if version is None else version
                self.loaded_at = time.time()
                return self.status()
            finally:
                self._swap.release_exclusive()

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "lora_name": self.lora_name, "loaded_at": self.loaded_at}

    # -- generation -------------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        try:
            out = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=True,
                add_generation_prompt=True,
                chat_template=self.chat_template,
                return_dict=False,
            )
        except Exception as e:
            raise BadRequest(f"Chat template failed: {type(e).__name__}: {e}", "messages") from None
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def generate(
        self, prompt_ids: list[int], s: Sampling, want_logprobs: bool = False, coalesce: bool = False
    ) -> dict[str, Any]:
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise BadRequest(
                f"Prompt has {len(prompt_ids)} tokens, the context is {self.max_context} tokens",
                "messages",
                "context_length_exceeded",
            )
        max_new = room if s.max_tokens is None else min(s.max_tokens, room)
        if not self._slots.acquire(blocking=False):
            raise QueueFull("The generation queue is full")
        try:
            self._swap.acquire_shared()
            try:
                version = self.version
                g = self.engine.generate(prompt_ids, s, max_new, want_logprobs, coalesce)
            finally:
                self._swap.release_shared()
        finally:
            self._slots.release()
        return {
            "token_ids": g.token_ids,
            "logprobs": g.logprobs,
            "version": version,
            "max_new": max_new,
            "seconds": g.seconds,
        }

    def complete(self, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """One chat completion; returns the response object and the version that produced it."""
        messages = normalize_messages(body.get("messages"))
        tools = normalize_tools(body.get("tools"))
        if body.get("tool_choice") == "none":
            tools = None
        s = parse_sampling(body)
        prompt_ids = self.render(messages, tools)
        want_lp = bool(body.get("logprobs"))
        # The first step of an episode (no assistant message yet) is the same request for every rollout of a
        # group: the engine may serve them together.
        first_step = not any(m["role"] == "assistant" for m in messages)
        g = self.generate(prompt_ids, s, want_logprobs=want_lp, coalesce=first_step)
        ids: list[int] = g["token_ids"]
        ended = bool(ids) and ids[-1] in self.eot_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped_by_string = False
        for stop in s.stop:
            k = text.find(stop)
            if k >= 0:
                text, stopped_by_string = text[:k], True
        content, calls = parse_tool_calls(text) if tools else (text, [])
        if calls:
            finish = "tool_calls"
        elif ended or stopped_by_string or len(ids) < g["max_new"]:
            finish = "stop"
        else:
            finish = "length"
        message: dict[str, Any] = {"role": "assistant", "content": (content if content or not calls else None)}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
        if g["logprobs"] is not None:
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choice["logprobs"] = {
                "content": [
                    {
                        "token": f"token_id:{t}" if as_ids else self.tokenizer.decode([t]),
                        "logprob": lp,
                        "bytes": None,
                        "top_logprobs": [],
                    }
                    for t, lp in zip(ids, g["logprobs"], strict=False)
                ]
            }
        version = g["version"]
        resp = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": _version_str(version),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt_ids) + len(ids),
            },
        }
        if body.get("return_token_ids"):
            resp["prompt_token_ids"] = prompt_ids
        log.info(
            json.dumps(
                {
                    "id": resp["id"],
                    "version": _version_str(version),
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": len(ids),
                    "finish_reason": finish,
                    "tok_per_s": round(len(ids) / g["seconds"], 1) if g["seconds"] > 0 else None,
                }
            )
        )
        return resp, version


# -- HTTP -----------------------------------------------------------------------------------------------------
def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    server: "PolicyHTTPServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("content-length") or 0)
        if n > MAX_BODY_BYTES:
            raise BadRequest(f"Request body has {n} bytes, the limit is {MAX_BODY_BYTES}")
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        return body

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        pm = self.server.policy
        route = self._route()
        if route == "/health":
            self._send(200, {"status": "ok", **pm.status()})
        elif route == "/v1/policy_version":
            self._send(200, pm.status(), {POLICY_VERSION_HEADER: _version_str(pm.version)})
        elif route == "/v1/models":
            self._send(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": pm.name,
                            "object": "model",
                            "created": int(pm.loaded_at),
                            "owned_by": "cm2",
                            "root": pm.name,
                            "policy_version": pm.version,
                            "lora_name": pm.lora_name,
                            "max_model_len": pm.max_context,
                        }
                    ],
                },
            )
        else:
            self._send(404, _error(f"No route GET {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        pm = self.server.policy
        route = self._route()
        try:
            body = self._body()
            if route == "/v1/chat/completions":
                resp, version = pm.complete(body)
                self._send(200, resp, {POLICY_VERSION_HEADER: _version_str(version)})
            elif route == "/v1/load_lora_adapter":
                name = body.get("lora_name")
                if not isinstance(name, str) or not name:
                    raise BadRequest("lora_name must be a non-empty string", "lora_name")
                version = body.get("version", name)
                if not isinstance(version, (str, int)) or isinstance(version, bool) or version == "":
                    raise BadRequest(f"version is {version!r}, expected a string or an integer", "version")
                lora_path = body.get("lora_path")
                checkpoint = body.get("checkpoint")
                if (lora_path is None) == (checkpoint is None):
                    raise BadRequest("Give exactly one of lora_path and checkpoint", "lora_path")
                if lora_path is not None and not isinstance(lora_path, str):
                    raise BadRequest("lora_path must be a string", "lora_path")
                store_root = body.get("store_root") or self.server.store_root
                st = pm.load_adapter(name, version, lora_path=lora_path, checkpoint=checkpoint, store_root=store_root)
                log.info("adapter %s is live as version %s", name, version)
                self._send(200, st, {POLICY_VERSION_HEADER: _version_str(st["version"])})
            elif route == "/v1/unload_lora_adapter":
                st = pm.unload_adapter(body.get("version"))
                self._send(200, st, {POLICY_VERSION_HEADER: _version_str(st["version"])})
            else:
                self._send(404, _error(f"No route POST {self.path}", "invalid_request_error"))
        except BadRequest as e:
            self._send(400, _error(str(e), "invalid_request_error", e.param, e.code))
        except QueueFull as e:
            self._send(429, _error(str(e), "rate_limit_error"), {"retry-after": "1"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - the server must answer
            log.exception("Request %s failed", route)
            self._send(500, _error(f"{type(e).__name__}: {e}", "server_error"))


class PolicyHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], policy: PolicyModel, store_root: str | None = None) -> None:
        super().__init__(addr, _Handler)
        self.policy = policy
        self.store_root = store_root


def serve_in_thread(
    policy: PolicyModel, host: str = "127.0.0.1", port: int = 0, store_root: str | None = None
) -> tuple[PolicyHTTPServer, threading.Thread]:
    """Start a server on a background thread (tests, embedding); ``server.server_address[1]`` is the port."""
    srv = PolicyHTTPServer((host, port), policy, store_root)
    t = threading.Thread(target=srv.serve_forever, name="cm2-policy-server", daemon=True)
    t.start()
    return srv, t


def _parse_version(v: str) -> Any:
    return int(v) if re.fullmatch(r"-?\d+", v) else v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cm2-policy-server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file or HF model directory/id of the base model")
    ap.add_argument("--tokenizer", help="HF tokenizer directory/id (default: from --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--served-model-name", default=None, help="model id in responses (default: file stem)")
    ap.add_argument("--version", default="0", help="policy version of the base model (before any adapter)")
    ap.add_argument("--lora-path", help="adapter directory to make live at start")
    ap.add_argument("--store-root", default=None, help="artifact store root for checkpoint refs")
    ap.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "llama.cpp", "transformers"],
        help="generation engine: llama.cpp's llama-server for a GGUF base (auto when it is built), "
        "else transformers in this process",
    )
    ap.add_argument(
        "--llama-server",
        default=None,
        help="llama-server binary (default: $CM2_LLAMA_SERVER, else the checked .cm2/llama.cpp/llama-server)",
    )
    ap.add_argument("--parallel", type=int, default=4, help="llama.cpp: requests generated at once (slots)")
    ap.add_argument(
        "--coalesce-window",
        type=float,
        default=1.5,
        help="llama.cpp: seconds an episode's first request waits for the identical requests of the "
        "rest of its group, which then share one prompt pass (0 turns it off)",
    )
    ap.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="prompt + completion tokens per request (default: the model's; llama.cpp 4096)",
    )
    ap.add_argument("--max-queue", type=int, default=16, help="requests waiting for the model before 429")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads: llama.cpp default all cores; torch default a quarter of the cores (on 2 "
        "shared cores 2 torch threads ran 5x slower than 1)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--chat-template", help="Jinja chat template file (default: see serving_chat_template)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    is_gguf = Path(a.model).suffix.lower() == ".gguf"
    binary = a.llama_server or _default_llama_server()
    engine_name = a.engine
    if engine_name == "auto":
        engine_name = "llama.cpp" if is_gguf and binary else "transformers"
        if is_gguf and not binary:
            log.warning(
                "llama-server is not built (deno task setup builds it): generating with transformers, "
                "~10x slower on CPU"
            )
    if engine_name == "llama.cpp" and (not is_gguf or not binary):
        raise SystemExit("--engine llama.cpp needs a GGUF --model and a llama-server binary (--llama-server)")
    binary = str(binary or "")
    tok = load_tokenizer(a.tokenizer or a.model)
    template = Path(a.chat_template).read_text() if a.chat_template else None
    name = a.served_model_name or Path(a.model).name.removesuffix(".gguf")
    engine: Any = None
    model: Any = None
    if engine_name == "llama.cpp":
        log_dir = Path(os.environ.get("CM2_LOG_DIR") or tempfile.gettempdir())
        engine = LlamaCppEngine(
            binary,
            a.model,
            threads=a.threads or (os.cpu_count() or 2),
            parallel=a.parallel,
            ctx_per_slot=a.max_context or 4096,
            log_path=str(log_dir / "policy-llama-server.log"),
            coalesce_window_s=a.coalesce_window,
        )
    else:
        import torch

        torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 2) // 4))
        model = load_base_model(a.model, a.dtype)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    pm = PolicyModel(
        model,
        tok,
        version=_parse_version(a.version),
        name=name,
        max_context=a.max_context,
        max_queue=a.max_queue,
        chat_template=template,
        engine=engine,
    )
    try:
        if a.lora_path:
            pm.load_adapter(Path(a.lora_path).name, _parse_version(a.version), lora_path=a.lora_path)
        srv = PolicyHTTPServer((a.host, a.port), pm, a.store_root)
        log.info(
            "policy server on http://%s:%d/v1 (model %s, engine %s, version %s, loaded in %.1f s, template %s)",
            a.host,
            srv.server_address[1],
            name,
            pm.engine.name,
            pm.version,
            time.perf_counter() - t0,
            "cm2 tool ChatML" if pm.chat_template == TOOL_CHAT_TEMPLATE else "tokenizer's",
        )
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            srv.server_close()
    finally:
        pm.engine.close()


if __name__ == "__main__":
    main()
