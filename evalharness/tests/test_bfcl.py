"""BFCL multi-turn through the CLI, graded by bfcl-eval's own multi-turn checker, against the scripted TEST DOUBLE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CANARY, closed_port, files_containing, run_cli, run_many
from scripted_endpoint import ScriptedEndpoint

CATEGORIES = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"]
ENTRIES = ["multi_turn_base_0", "multi_turn_base_1"]


def _reference(task: str) -> dict:
    res = run_cli("reference", "--bench", "bfcl", "--category", "multi_turn_base", "--task", task)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.json


def _run_args(task: str, port: int, root: Path, trial: int = 0) -> tuple[str, ...]:
    return (
        "run", "--bench", "bfcl", "--category", "multi_turn_base", "--task", task, "--trial", str(trial),
        "--root", str(root), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "scripted-policy",
    )  # fmt: skip


@pytest.fixture(scope="module")
def bfcl_runs(module_tmp: Path) -> dict:
    """All BFCL trials of this module, run concurrently against in-process scripted endpoints."""
    refs = {task: _reference(task) for task in ENTRIES}
    right = {task: ScriptedEndpoint({"mode": "bfcl", **refs[task]}).__enter__() for task in ENTRIES}
    wrong = ScriptedEndpoint({"mode": "bfcl", **refs[ENTRIES[0]], "mutate": {"turn": 0, "call": 0}}).__enter__()
    broken = ScriptedEndpoint({"mode": "error500"}).__enter__()
    try:
        names = ["right0", "right1", "wrong0", "down", "error500"]
        calls = [
            (_run_args(ENTRIES[0], right[ENTRIES[0]].port, module_tmp / "right0"), {"CM2_EVAL_AGENT_API_KEY": CANARY}),
            (_run_args(ENTRIES[1], right[ENTRIES[1]].port, module_tmp / "right1"), None),
            (_run_args(ENTRIES[0], wrong.port, module_tmp / "wrong0", trial=1), None),
            (_run_args(ENTRIES[0], closed_port(), module_tmp / "down"), None),
            (_run_args(ENTRIES[0], broken.port, module_tmp / "error500"), None),
        ]
        results = run_many(calls)
        out = dict(zip(names, results, strict=True))
        out["refs"] = refs
        out["requests"] = {"right0": list(right[ENTRIES[0]].requests), "error500": list(broken.requests)}
        return out
    finally:
        for ep in [*right.values(), wrong, broken]:
            ep.__exit__(None, None, None)


def test_reference_structure() -> None:
    ref = _reference("multi_turn_base_0")
    assert ref["id"] == "multi_turn_base_0"
    assert ref["version"] == "bfcl-eval==2026.3.23"
    # per turn: a flat list of call strings (what the checker executes), not nested steps
    assert all(isinstance(turn, list) and all(isinstance(c, str) for c in turn) for turn in ref["turns"])
    assert ref["turns"][0][0] == "cd(folder='document')"
    assert {f["name"] for f in ref["functions"]} >= {"cd", "mv", "mkdir"}


@pytest.mark.parametrize("task", ENTRIES)
def test_ground_truth_replay_passes_official_checker(bfcl_runs: dict, task: str) -> None:
    res = bfcl_runs["right" + task[-1]]
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.json
    assert out["error"] is None
    assert out["score"] == 1.0 and out["passed"] is True, out
    assert out["detail"]["valid"] is True
    assert out["steps"] >= len(bfcl_runs["refs"][task]["turns"])
    assert out["tokens"]["prompt"] > 0 and out["tokens"]["completion"] > 0
    if task == ENTRIES[0]:
        sent = bfcl_runs["requests"]["right0"]
        assert sent and all(r["max_tokens"] == 512 and r["temperature"] == 0.001 for r in sent), sent
        assert all(r["model"] == "scripted-policy" and r["seed"] is None for r in sent)


def test_one_wrong_argument_fails_official_checker(bfcl_runs: dict) -> None:
    res = bfcl_runs["wrong0"]
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.json
    assert out["score"] == 0.0 and out["passed"] is False
    assert out["error"] is None  # a bad answer is a score of 0, not an error
    assert out["detail"]["error_type"].startswith("multi_turn:")
    assert len(json.dumps(out["detail"])) < 8000


def test_endpoint_down_is_retryable_not_scored(bfcl_runs: dict) -> None:
    res = bfcl_runs["down"]
    assert res.returncode == 3, res.stderr[-2000:]
    out = res.json
    assert out["score"] is None and out["passed"] is None
    assert out["error"]["kind"] == "endpoint"


def test_http_5xx_is_retryable_not_scored(bfcl_runs: dict) -> None:
    res = bfcl_runs["error500"]
    assert res.returncode == 3, res.stderr[-2000:]
    assert res.json["error"]["kind"] == "endpoint" and res.json["score"] is None
    assert len(bfcl_runs["requests"]["error500"]) >= 1


def test_api_key_canary_never_leaks(bfcl_runs: dict, module_tmp: Path) -> None:
    res = bfcl_runs["right0"]
    assert res.returncode == 0
    assert CANARY not in res.stdout
    assert CANARY not in res.stderr
    assert files_containing(module_tmp / "right0", CANARY) == []
    assert any((module_tmp / "right0").rglob("*.json"))  # the trial record was written (and is clean)


@pytest.mark.parametrize("category", CATEGORIES)
def test_tasks_lists_dataset_order(category: str) -> None:
    res = run_cli("tasks", "--bench", "bfcl", "--category", category)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.json
    assert out["bench"] == "bfcl" and out["category"] == category
    assert out["version"] == "bfcl-eval==2026.3.23"
    assert out["tasks"][0] == f"{category}_0"
    assert out["tasks"] == [f"{category}_{i}" for i in range(len(out["tasks"]))]
    assert len(out["tasks"]) >= 50


@pytest.mark.parametrize("category", ["web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector"])
def test_internet_categories_refused(category: str) -> None:
    res = run_cli("tasks", "--bench", "bfcl", "--category", category)
    assert res.returncode == 2
    assert "internet" in res.stderr
    assert res.stdout.strip() == ""


def test_bad_inputs_exit_2(module_tmp: Path) -> None:
    res = run_cli("tasks", "--bench", "nope", "--category", "multi_turn_base")
    assert res.returncode == 2 and "nope" in res.stderr and "bfcl" in res.stderr
    res = run_cli("tasks", "--bench", "bfcl", "--category", "simple_python")
    assert res.returncode == 2 and "simple_python" in res.stderr and "multi_turn_base" in res.stderr
    res = run_cli(*_run_args("multi_turn_base_99999", closed_port(), module_tmp / "bad"))
    assert res.returncode == 2 and "multi_turn_base_99999" in res.stderr
    assert res.json["error"]["kind"] == "bad_input" and res.json["score"] is None
