"""Helpers for the harness tests: run the CLI as a subprocess (one process per trial, as the Deno side does)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HARNESS_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

CANARY = "cm2-canary-key-7f3b9c2e5d1a"


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one stdout line, got {len(lines)}: {self.stdout[:500]!r}"
        return json.loads(lines[0])


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CM2_EVAL_")}
    full_env["PYTHONPATH"] = str(HARNESS_DIR)
    # Nothing may reach the internet: no proxies, and the harness itself forces litellm's local price map.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        full_env.pop(key, None)
    full_env["NO_PROXY"] = "127.0.0.1,localhost"
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "cm2_eval", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=str(HARNESS_DIR),
    )
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


def run_many(calls: list[tuple[tuple[str, ...], dict[str, str] | None]], workers: int = 3) -> list[CliResult]:
    """Run several CLI processes concurrently (imports of litellm/tau2 take ~10 s of CPU each)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_cli, *args, env=env) for args, env in calls]
        return [f.result() for f in futures]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cm2eval")
