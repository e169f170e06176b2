"""Policy server: the base model plus the live LoRA adapter behind an OpenAI-compatible chat-completions API.

Endpoints (127.0.0.1 by default, standard-library ``ThreadingHTTPServer``: one process, no extra dependency,
and generation is serialised anyway, so an async framework would buy nothing here):

    POST /v1/chat/completions     messages, tools, temperature/top_p/max_tokens/seed/stop, return_token_ids
    POST /v1/load_lora_adapter    {lora_name, lora_path | checkpoint [+ store_url], version} -> live version
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

The server is four modules: this HTTP layer and ``main``; ``policy.py`` (the live policy: versions, adapter
swaps, render → generate → parse); ``engines.py`` (transformers and llama.cpp); ``chat.py`` (chat template,
tool-call parsing, request validation) and ``models.py`` (base model and tokenizer loading, checkpoint
materialisation), which the trainer's ``update.py`` also uses.

Prompts are rendered with the tokenizer's chat template, passing ``tools``. A template that ignores tools
(SmolLM2's ChatML) is replaced by ``chat.TOOL_CHAT_TEMPLATE``, which renders exactly like SmolLM2's without
tools and adds Hermes-style tool descriptions and ``<tool_call>`` blocks with them; the trainer must render
with the same template (:func:`serving_chat_template`). Tool calls are parsed from ``<tool_call>{json}
</tool_call>`` blocks in the output.

Checkpoint refs: the ref points at the trainer's ``cm2.checkpoint/v1`` manifest (``update.py``) in the artifact
store that ``store_url`` names (``file:///abs/path`` or ``s3://bucket/prefix?endpoint=...``, see
``store.open_store``; default the server's ``--store``); its ``files`` map names to refs, and
``adapter_config.json`` and ``adapter_model.*`` are verified (size, sha256) while they are copied to a staging
directory.

A GGUF base is read through transformers once and cached beside it (``.cache/<file>.tokenizer/``, 3 MB, and
``.cache/<file>.model/``, dequantised float32 safetensors, ~540 MB for SmolLM2-135M): the first start takes
about two minutes on 2 cores, later ones a few seconds.

Run: ``python -m cm2_trainer.serve --model .cm2/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8765``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .chat import TOOL_CHAT_TEMPLATE, BadRequest
from .engines import LlamaCppEngine, QueueFull, default_llama_server
from .models import load_base_model, load_tokenizer
from .policy import PolicyModel, version_str
from .store import store_url_arg

log = logging.getLogger("cm2_trainer.serve")


POLICY_VERSION_HEADER = "x-cm2-policy-version"
MAX_BODY_BYTES = 16 * 1024 * 1024


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
            self._send(200, pm.status(), {POLICY_VERSION_HEADER: version_str(pm.version)})
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
                self._send(200, resp, {POLICY_VERSION_HEADER: version_str(version)})
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
                store_url = body.get("store_url")
                if store_url is not None and not isinstance(store_url, str):
                    raise BadRequest("store_url must be a string", "store_url")
                store_url = store_url or self.server.store_url
                st = pm.load_adapter(name, version, lora_path=lora_path, checkpoint=checkpoint, store_url=store_url)
                log.info("adapter %s is live as version %s", name, version)
                self._send(200, st, {POLICY_VERSION_HEADER: version_str(st["version"])})
            elif route == "/v1/unload_lora_adapter":
                st = pm.unload_adapter(body.get("version"))
                self._send(200, st, {POLICY_VERSION_HEADER: version_str(st["version"])})
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

    def __init__(self, addr: tuple[str, int], policy: PolicyModel, store_url: str | None = None) -> None:
        super().__init__(addr, _Handler)
        self.policy = policy
        self.store_url = store_url


def serve_in_thread(
    policy: PolicyModel, host: str = "127.0.0.1", port: int = 0, store_url: str | None = None
) -> tuple[PolicyHTTPServer, threading.Thread]:
    """Start a server on a background thread (tests, embedding); ``server.server_address[1]`` is the port."""
    srv = PolicyHTTPServer((host, port), policy, store_url)
    t = threading.Thread(target=srv.serve_forever, name="cm2-policy-server", daemon=True)
    t.start()
    return srv, t


def _parse_version(v: str) -> Any:
    return int(v) if re.fullmatch(r"-?\d+", v) else v


def main(argv: list[str] | None = None) -> None:
    """The policy server's command line: flag declarations (most of its length), then loading and serving."""
    ap = argparse.ArgumentParser(prog="cm2-policy-server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file or HF model directory/id of the base model")
    ap.add_argument("--tokenizer", help="HF tokenizer directory/id (default: from --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--served-model-name", default=None, help="model id in responses (default: file stem)")
    ap.add_argument("--version", default="0", help="policy version of the base model (before any adapter)")
    ap.add_argument("--lora-path", help="adapter directory to make live at start")
    ap.add_argument(
        "--store",
        metavar="URL",
        default=None,
        type=store_url_arg,
        help="artifact store for checkpoint refs, when a request gives no store_url: file:///abs/path, a path, or "
        "s3://bucket/prefix?endpoint=http://host:port (S3 credentials from the environment)",
    )
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
    binary = a.llama_server or default_llama_server()
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
        srv = PolicyHTTPServer((a.host, a.port), pm, a.store)
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
