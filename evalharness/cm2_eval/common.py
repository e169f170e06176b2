"""Shared pieces of the cm2 evaluation harness: exit codes, errors, the output line, secret redaction."""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_RETRYABLE = 3
EXIT_INTERNAL = 4

AGENT_KEY_ENV = "CM2_EVAL_AGENT_API_KEY"
USER_KEY_ENV = "CM2_EVAL_USER_API_KEY"

DETAIL_CLIP = 2048


class HarnessError(Exception):
    """An error that ends the run with a given exit code and a JSON error object."""

    def __init__(self, kind: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.exit_code = exit_code


class BadInput(HarnessError):
    def __init__(self, message: str, kind: str = "bad_input") -> None:
        super().__init__(kind, message, EXIT_BAD_INPUT)


class EndpointError(HarnessError):
    def __init__(self, message: str) -> None:
        super().__init__("endpoint", message, EXIT_RETRYABLE)


def agent_api_key() -> str:
    return os.environ.get(AGENT_KEY_ENV) or "none"


def user_api_key() -> str:
    return os.environ.get(USER_KEY_ENV) or os.environ.get(AGENT_KEY_ENV) or "none"


def _secrets() -> list[str]:
    out = []
    for name in (AGENT_KEY_ENV, USER_KEY_ENV):
        value = os.environ.get(name)
        if value and value != "none" and len(value) >= 4:
            out.append(value)
    return out


def redact(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def redact_obj(value: Any) -> Any:
    """Recursively redact secrets from strings and drop `api_key` fields."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: ("***" if k.lower() in ("api_key", "apikey", "authorization") else redact_obj(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value


def clip(text: str, limit: int = DETAIL_CLIP) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} more chars]"


def clip_json(value: Any, limit: int = DETAIL_CLIP) -> Any:
    """Keep small JSON values as they are; replace big ones by a clipped JSON string."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = str(value)
    if len(text) <= limit:
        return json.loads(text) if text and text[0] in "[{" else value
    return clip(text, limit)


@dataclass
class TrialResult:
    score: float | None = None
    passed: bool | None = None
    error: dict[str, str] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        obj = {
            "score": self.score,
            "passed": self.passed,
            "error": self.error,
            "tokens": {"prompt": int(self.prompt_tokens), "completion": int(self.completion_tokens)},
            "steps": int(self.steps),
            "seconds": round(float(self.seconds), 3),
            "detail": self.detail,
        }
        return redact(json.dumps(redact_obj(obj), default=str))


class OutputGuard:
    """Keeps stdout for the one JSON line and sends everything else (also C-level writes) to stderr.

    fd 1 and fd 2 are pointed at a pipe; a thread copies the pipe to the real stderr line by line, replacing any
    secret value (API keys) on the way. The real stdout is kept on a private fd for the final line.
    """

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._stdout_fd = os.dup(1)
        self._stderr_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self._closed = False

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            if b"\n" in pending:
                lines, pending = pending.rsplit(b"\n", 1)
                self._emit(lines + b"\n")
            elif len(pending) > 1 << 20:
                self._emit(pending)
                pending = b""
        if pending:
            self._emit(pending)

    def _emit(self, data: bytes) -> None:
        text = redact(data.decode("utf-8", errors="replace"))
        try:
            os.write(self._stderr_fd, text.encode("utf-8"))
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        # Restore fds 1 and 2 to their originals: the pipe's write end closes, the pump drains and stops.
        os.dup2(self._stderr_fd, 2)
        os.dup2(self._stdout_fd, 1)
        self._thread.join(timeout=5)

    def print_line(self, line: str) -> None:
        self.close()
        os.write(self._stdout_fd, (line + "\n").encode("utf-8"))


def print_json_line(obj: Any, guard: OutputGuard | None = None) -> None:
    line = redact(json.dumps(redact_obj(obj), default=str))
    if guard is not None:
        guard.print_line(line)
    else:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def classify_exception(exc: BaseException) -> str | None:
    """'endpoint' for infrastructure failures (retryable), 'endpoint_config' for 401/403/404, None otherwise."""
    import openai

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)):
            return "endpoint"
        status = getattr(cur, "status_code", None)
        if isinstance(status, int):
            if status >= 500 or status == 429:
                return "endpoint"
            if status in (401, 403, 404):
                return "endpoint_config"
        if isinstance(cur, (ConnectionError, TimeoutError)):
            return "endpoint"
        try:
            import httpx

            if isinstance(cur, (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError)):
                return "endpoint"
        except ImportError:  # pragma: no cover
            pass
        cur = cur.__cause__ or cur.__context__
    return None


def exception_text(exc: BaseException) -> str:
    return clip(redact(f"{type(exc).__name__}: {exc}"), 1024)


def raise_for_endpoint(exc: BaseException, during: str) -> None:
    """Re-raise an endpoint failure as the harness's error (exit 3: unreachable, retried by the caller; exit 2: the
    endpoint refused the request); return for anything else, which the benchmark scores as the model's answer."""
    kind = classify_exception(exc)
    if kind == "endpoint":
        raise EndpointError(f"endpoint failed during {during}: {exception_text(exc)}") from exc
    if kind == "endpoint_config":
        raise HarnessError("endpoint_config", f"endpoint rejected the request: {exception_text(exc)}", 2) from exc
