"""TEST DOUBLE: a scripted OpenAI-compatible chat-completions endpoint (stdlib only, 127.0.0.1).

It is not a model. It replays a known trajectory so the harness and the benchmarks' own graders can be tested
end to end without one. Stateless: every answer is derived from the request's messages, so any number of trials
(and restarts) behave the same.

Script (JSON), one of:

  {"mode": "bfcl", "turns": [["cd(folder='document')", ...], ...], "functions": [...], "missed_function": {...},
   "mutate": null | {"turn": 0, "call": 0}}
      `turns`/`functions`/`missed_function` as `python -m cm2_eval reference --bench bfcl` prints them. Turn index =
      number of user messages in the request - 1. When the last message is a user message it answers all calls of
      that turn as `tool_calls` (one step); after the tool results it closes the turn with a plain message. An empty
      turn is answered with a plain message. `mutate` changes the first argument of one call.

  {"mode": "tau2", "agent_model": "agent", "user_model": "user", "actions": [{"name", "arguments"}, ...],
   "user_message": "...", "final_message": "...", "stop": "###STOP###", "mutate": null | {"action": 0}}
      Requests whose `model` is agent_model are the agent: it performs the actions one tool call per message (the
      number of assistant tool-call messages already in the request says which), then sends final_message. Requests
      for user_model are the user simulator: first the user_message, afterwards the stop token.

  {"mode": "error500"}   every request gets HTTP 500 (an endpoint failing server-side).

  {"mode": "by_first_user", "scripts": [{"first_user": "...", <a bfcl or tau2 script>}, ...]}
      One endpoint for several tasks: the request's first user message picks the script whose `first_user` it
      equals (so one policy can be evaluated on many tasks, as `cm2 eval` does).

  --log FILE appends one JSON line per chat request: {"first_user": sha256 of the first user message (hex, 16),
  "users": user messages, "assistants": assistant messages} (never message text), so a test can count the runs
  of each task.

Run: python evalharness/tests/scripted_endpoint.py --script FILE [--port-file FILE] [--port N]
     prints {"port": N} on stdout once listening and writes the port number to --port-file.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MUTATION_SUFFIX = "_cm2mutated"


# ---- call-string parsing (BFCL ground truth) ----


def _param_order(functions: list[dict], name: str) -> list[str]:
    for doc in functions:
        if doc.get("name") == name:
            return list(((doc.get("parameters") or {}).get("properties") or {}).keys())
    return []


def parse_call(call: str, functions: list[dict]) -> tuple[str, dict[str, Any]]:
    """ "mv(source='a', destination='b')" -> ("mv", {"source": "a", "destination": "b"}). Positional arguments get
    the parameter names in the order of the function doc's properties."""
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call):
        raise ValueError(f"not a call: {call!r}")
    func = node.func
    if isinstance(func, ast.Name):
        name = func.id
    elif isinstance(func, ast.Attribute):
        name = func.attr
    else:
        raise ValueError(f"unsupported callee in {call!r}")
    arguments: dict[str, Any] = {}
    order = _param_order(functions, name)
    for index, arg in enumerate(node.args):
        if index >= len(order):
            raise ValueError(f"positional argument {index} of {name} has no parameter name")
        arguments[order[index]] = ast.literal_eval(arg)
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError(f"**kwargs not supported in {call!r}")
        arguments[keyword.arg] = ast.literal_eval(keyword.value)
    return name, arguments


def mutate_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Change the first argument's value (a wrong argument)."""
    out = dict(arguments)
    if not out:
        return out
    key = next(iter(out))
    value = out[key]
    if isinstance(value, bool):
        out[key] = not value
    elif isinstance(value, (int, float)):
        out[key] = value + 1
    elif isinstance(value, str):
        out[key] = value + MUTATION_SUFFIX
    elif isinstance(value, list):
        out[key] = value + [MUTATION_SUFFIX]
    else:
        out[key] = MUTATION_SUFFIX
    return out


# ---- responses ----


def _completion(model: str, content: str | None, tool_calls: list[dict] | None, prompt_chars: int) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    completion_tokens = max(1, len(json.dumps(tool_calls) if tool_calls else (content or "")) // 4)
    return {
        "id": f"chatcmpl-scripted-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": completion_tokens,
            "total_tokens": max(1, prompt_chars // 4) + completion_tokens,
        },
    }


def _tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def answer_bfcl(script: dict, request: dict) -> dict:
    messages = request.get("messages") or []
    functions = list(script.get("functions") or [])
    for docs in (script.get("missed_function") or {}).values():
        functions.extend(docs)
    turn = sum(1 for m in messages if m.get("role") == "user") - 1
    turns = script["turns"]
    prompt_chars = len(json.dumps(messages))
    model = request.get("model", "scripted")
    last_role = messages[-1].get("role") if messages else None
    if turn < 0 or turn >= len(turns) or last_role != "user" or not turns[turn]:
        return _completion(model, "Done.", None, prompt_chars)
    mutate = script.get("mutate") or None
    calls = []
    for index, call in enumerate(turns[turn]):
        name, arguments = parse_call(call, functions)
        if mutate and mutate.get("turn") == turn and mutate.get("call", 0) == index:
            arguments = mutate_arguments(arguments)
        calls.append(_tool_call(f"call_{turn}_{index}", name, arguments))
    return _completion(model, None, calls, prompt_chars)


def answer_tau2(script: dict, request: dict) -> dict:
    messages = request.get("messages") or []
    model = request.get("model", "")
    prompt_chars = len(json.dumps(messages))
    if model == script.get("user_model", "user"):
        spoken = sum(1 for m in messages if m.get("role") == "assistant")
        if spoken == 0:
            return _completion(model, script.get("user_message", "Hello, I need help."), None, prompt_chars)
        return _completion(model, script.get("stop", "###STOP###"), None, prompt_chars)
    if model != script.get("agent_model", "agent"):
        raise LookupError(f"unknown model {model!r}")
    done = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    actions = script.get("actions") or []
    if done < len(actions):
        action = actions[done]
        arguments = dict(action.get("arguments") or {})
        mutate = script.get("mutate") or None
        if mutate and mutate.get("action", 0) == done:
            arguments = mutate_arguments(arguments)
        return _completion(model, None, [_tool_call(f"call_{done}", action["name"], arguments)], prompt_chars)
    return _completion(model, script.get("final_message", "Your request has been completed."), None, prompt_chars)


class _Handler(BaseHTTPRequestHandler):
    server_version = "cm2-scripted-endpoint/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet unless asked
        if getattr(self.server, "verbose", False):
            sys.stderr.write("scripted_endpoint: " + (format % args) + "\n")

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _log(self, request: dict) -> None:
        path = self.server.log_path  # type: ignore[attr-defined]
        if not path:
            return
        import hashlib

        roles = [m.get("role") for m in request.get("messages") or []]
        line = {
            "first_user": hashlib.sha256(_first_user(request).encode()).hexdigest()[:16],
            "users": roles.count("user"),
            "assistants": roles.count("assistant"),
        }
        with self.server.log_lock, open(path, "a") as f:  # type: ignore[attr-defined]
            f.write(json.dumps(line) + "\n")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        script = self.server.script  # type: ignore[attr-defined]
        try:
            peek = json.loads(raw or b"{}")
        except ValueError:
            peek = {}
        # What the harness sent (for assertions): the sampling caps, never message contents or headers.
        self.server.requests.append(  # type: ignore[attr-defined]
            {k: peek.get(k) for k in ("model", "max_tokens", "temperature", "seed")} | {"path": self.path}
        )
        if script.get("mode") == "error500":
            self._send(500, {"error": {"message": "scripted server error", "type": "server_error"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            request = json.loads(raw or b"{}")
            self._log(request)
            if script.get("mode") == "by_first_user":
                first = _first_user(request)
                script = next((x for x in script["scripts"] if x.get("first_user") == first), None)
                if script is None:
                    raise LookupError("no script for this first user message")
            if script.get("mode") == "bfcl":
                response = answer_bfcl(script, request)
            elif script.get("mode") == "tau2":
                response = answer_tau2(script, request)
            else:
                raise LookupError(f"unknown script mode {script.get('mode')!r}")
        except Exception as exc:  # noqa: BLE001 - a test double: report as a 400
            self._send(400, {"error": {"message": f"scripted endpoint: {type(exc).__name__}: {exc}"}})
            return
        self._send(200, response)


def _first_user(request: dict) -> str:
    for m in request.get("messages") or []:
        if m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class ScriptedEndpoint:
    """In-process use: `with ScriptedEndpoint(script) as ep: ep.base_url`."""

    def __init__(self, script: dict, port: int = 0, verbose: bool = False) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.script = script  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.server.verbose = verbose  # type: ignore[attr-defined]
        self.server.log_path = None  # type: ignore[attr-defined]
        self.server.log_lock = threading.Lock()  # type: ignore[attr-defined]
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[dict]:
        return self.server.requests  # type: ignore[attr-defined]

    def __enter__(self) -> "ScriptedEndpoint":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description="TEST DOUBLE: scripted OpenAI-compatible endpoint")
    parser.add_argument("--script", required=True)
    parser.add_argument("--port-file", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log", default=None, help="append one JSON line per chat request (no message text)")
    args = parser.parse_args()
    with open(args.script) as f:
        script = json.load(f)
    endpoint = ScriptedEndpoint(script, port=args.port, verbose=args.verbose)
    endpoint.server.log_path = args.log  # type: ignore[attr-defined]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(endpoint.port))
        import os

        os.replace(tmp, args.port_file)
    print(json.dumps({"port": endpoint.port}), flush=True)
    try:
        endpoint.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
