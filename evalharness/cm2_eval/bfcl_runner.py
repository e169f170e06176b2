"""BFCL (bfcl-eval) multi-turn: one entry, one trial, in-process, graded by BFCL's own multi-turn checker.

Environment variables that BFCL reads at import time (BFCL_PROJECT_ROOT, OPENAI_BASE_URL, OPENAI_API_KEY) are set by
the caller before this module imports anything from bfcl_eval.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from .common import (
    BadInput,
    TrialResult,
    clip,
    clip_json,
    exception_text,
    raise_for_endpoint,
    redact_obj,
)

BENCH = "bfcl"
PACKAGE = "bfcl-eval"
CATEGORIES = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"]
DEFAULT_TEMPERATURE = 0.001  # BFCL's own default (bfcl generate --temperature)
REGISTRY_NAME = "cm2-eval"  # internal BFCL registry name (result/instance naming); must not contain "_"


def check_category(category: str) -> None:
    if category in CATEGORIES:
        return
    if "web_search" in category or "memory" in category:
        raise BadInput(
            f"BFCL category {category!r} needs the internet (web search / memory backends) and is not supported "
            f"offline; allowed categories: {', '.join(CATEGORIES)}",
            kind="needs_internet",
        )
    raise BadInput(f"unknown BFCL category {category!r}; allowed categories: {', '.join(CATEGORIES)}")


def _entries(category: str, **kwargs: Any) -> list[dict]:
    from bfcl_eval.utils import load_dataset_entry

    return load_dataset_entry(category, **kwargs)


def list_tasks(category: str) -> list[str]:
    check_category(category)
    return [entry["id"] for entry in _entries(category)]


def _find(entries: list[dict], task_id: str, category: str) -> dict:
    for entry in entries:
        if entry["id"] == task_id:
            return copy.deepcopy(entry)
    raise BadInput(f"unknown BFCL task id {task_id!r} in category {category!r}")


def _ground_truth(category: str, task_id: str) -> list[list[str]]:
    from bfcl_eval.utils import load_ground_truth_entry

    for item in load_ground_truth_entry(category):
        if item["id"] == task_id:
            return item["ground_truth"]
    raise BadInput(f"no BFCL ground truth for task id {task_id!r} in category {category!r}")


def reference(category: str, task_id: str) -> dict:
    """Ground truth for a scripted test double: per turn, the flat list of call strings BFCL's checker executes.

    `functions` is the function doc list offered from the first turn; `missed_function` maps a turn index (string) to
    the function docs BFCL adds at that turn (miss_func category). `questions` are the user messages per turn (a turn
    with an empty list is a holdout turn where BFCL itself sends a fixed prompt).
    """
    check_category(category)
    entry = _find(_entries(category), task_id, category)
    return {
        "bench": BENCH,
        "category": category,
        "id": task_id,
        "turns": _ground_truth(category, task_id),
        "functions": entry["function"],
        "missed_function": entry.get("missed_function", {}),
        "questions": entry["question"],
    }


def _official_entry_evaluator():
    """bfcl's own per-entry multi-turn evaluation (decode each step, then `multi_turn_checker`), as `bfcl evaluate`
    runs it.

    eval_runner imports `bfcl_eval.constants.model_config`, which imports every vendor SDK handler (anthropic,
    qwen_agent, ...; ~10 s on 2 cores) only to fill MODEL_CONFIG_MAPPING. The multi-turn path never reads that
    mapping (only the single-turn AST checker does), so a stub with an empty mapping stands in for it. Anything that
    does read it fails loudly (KeyError -> exit 4), never silently.
    """
    import sys
    import types

    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__doc__ = "cm2_eval stub: MODEL_CONFIG_MAPPING is not needed for multi-turn evaluation"
        stub.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
        sys.modules[name] = stub
    from bfcl_eval.eval_checker.eval_runner import _evaluate_single_multi_turn_entry

    return _evaluate_single_multi_turn_entry


def _make_handler(model: str, temperature: float, max_tokens: int, seed: int | None):
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler

    class CappedOpenAICompletionsHandler(OpenAICompletionsHandler):
        """BFCL's generic chat-completions FC handler, plus max_tokens and seed on every request.

        BFCL's own `generate_with_backoff` retries 429 forever (tenacity, no stop); here the OpenAI client's own
        bounded retries apply instead, and whatever still fails is reported as an endpoint error.
        """

        def generate_with_backoff(self, **kwargs):  # type: ignore[override]
            kwargs["max_tokens"] = max_tokens
            if seed is not None:
                kwargs["seed"] = seed
            start = time.time()
            response = self.client.chat.completions.create(**kwargs)
            return response, time.time() - start

    return CappedOpenAICompletionsHandler(
        model_name=model, temperature=temperature, registry_name=REGISTRY_NAME, is_fc_model=True
    )


def _sum_nested(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, list):
        return sum(_sum_nested(v) for v in value)
    return 0


def _count_leaves(value: Any) -> int:
    if isinstance(value, list):
        return sum(_count_leaves(v) for v in value)
    return 1


def run(
    *,
    category: str,
    task_id: str,
    trial: int,
    root: Path,
    model: str,
    temperature: float | None,
    max_tokens: int,
    max_steps: int,
    seed: int | None,
) -> TrialResult:
    check_category(category)
    entry = _find(_entries(category), task_id, category)  # unknown id: exit 2 before the heavy imports
    ground_truth = _ground_truth(category, task_id)

    import bfcl_eval.model_handler.base_handler as base_handler
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT

    _evaluate_single_multi_turn_entry = _official_entry_evaluator()
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    trial_seed = None if seed is None else seed + trial

    # BFCL forces a quit (entry fails) when one turn takes more than MAXIMUM_STEP_LIMIT (20) model queries past the
    # first; the module global is read at run time, so lowering it bounds the steps per turn.
    step_limit = max(0, min(max_steps, MAXIMUM_STEP_LIMIT))
    base_handler.MAXIMUM_STEP_LIMIT = step_limit

    handler = _make_handler(model, temperature, max_tokens, trial_seed)
    started = time.time()
    inference_error: str | None = None
    metadata: dict[str, Any] = {}
    try:
        model_result, metadata = handler.inference(entry, include_input_log=False, exclude_state_log=True)
    except Exception as exc:  # noqa: BLE001 - BFCL itself records any inference exception as the result
        raise_for_endpoint(exc, "BFCL inference")
        # Same as bfcl_eval._llm_response_generation.multi_threaded_inference: the error text becomes the result,
        # which the checker scores as a miss.
        inference_error = exception_text(exc)
        model_result = f"Error during inference: {exc}"

    # The checker gets a fresh prompt entry, loaded the way bfcl's evaluate loads it.
    prompt_entry = _find(
        _entries(category, include_prereq=False, include_language_specific_hint=False), task_id, category
    )
    verdict = _evaluate_single_multi_turn_entry(
        handler, task_id, model_result, ground_truth, prompt_entry, REGISTRY_NAME, category
    )
    valid = bool(verdict.get("valid"))
    seconds = time.time() - started

    detail: dict[str, Any] = {
        "bench": BENCH,
        "category": category,
        "task": task_id,
        "trial": trial,
        "valid": valid,
        "turns": len(ground_truth),
        "model_turns": len(model_result) if isinstance(model_result, list) else 0,
        "step_limit_per_turn": step_limit,
        "temperature": temperature,
        "seed": trial_seed,
    }
    if not valid:
        error = verdict.get("error") or {}
        detail["error_type"] = error.get("error_type")
        message = error.get("error_message")
        if not isinstance(message, str):
            message = json.dumps(message, default=str)
        detail["error_message"] = clip(message, 2048)
        if "details" in error:
            detail["error_details"] = clip_json(error["details"], 2048)
    if inference_error:
        detail["inference_error"] = inference_error

    out_dir = root / "bfcl"
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "id": task_id,
        "trial": trial,
        "result": model_result,
        "metadata": metadata,
        "verdict": {k: v for k, v in verdict.items() if k not in ("prompt",)},
    }
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)
    (out_dir / f"{safe_id}_trial{trial}.json").write_text(json.dumps(redact_obj(record), default=str))

    return TrialResult(
        score=1.0 if valid else 0.0,
        passed=valid,
        error=None,
        prompt_tokens=_sum_nested(metadata.get("input_token_count", [])),
        completion_tokens=_sum_nested(metadata.get("output_token_count", [])),
        steps=_count_leaves(metadata.get("latency", [])) if metadata.get("latency") else 0,
        seconds=seconds,
        detail=detail,
    )
