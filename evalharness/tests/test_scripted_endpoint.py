"""The scripted TEST DOUBLE itself: call parsing, and the subprocess mode the Deno tests use."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripted_endpoint import mutate_arguments, parse_call

FUNCS = [{"name": "sort", "parameters": {"properties": {"file_name": {}}}}]


def test_parse_call_keywords_and_positional() -> None:
    assert parse_call("mv(source='a.txt', destination='tmp')", []) == ("mv", {"source": "a.txt", "destination": "tmp"})
    assert parse_call("sort('final_report.pdf')", FUNCS) == ("sort", {"file_name": "final_report.pdf"})
    assert parse_call("ls(a=True)", []) == ("ls", {"a": True})
    assert parse_call("f(x=[1, 2], y={'k': 1.5})", []) == ("f", {"x": [1, 2], "y": {"k": 1.5}})


def test_mutate_changes_exactly_one_argument() -> None:
    out = mutate_arguments({"folder": "document", "n": 1})
    assert out["folder"] != "document" and out["n"] == 1


def test_runs_as_subprocess_with_port_file(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"mode": "bfcl", "turns": [["ls(a=True)"]], "functions": []}))
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "scripted_endpoint.py"), "--script", str(script),
         "--port-file", str(port_file)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        deadline = time.time() + 10
        while not port_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert int(port_file.read_text()) == first["port"]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "list"}]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{first['port']}/v1/chat/completions", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.loads(resp.read())
        call = answer["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == "ls" and json.loads(call["arguments"]) == {"a": True}
        assert answer["usage"]["prompt_tokens"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
