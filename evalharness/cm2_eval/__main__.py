"""cm2_eval CLI: `tasks`, `run`, `reference`. One JSON line on stdout; logs on stderr. See evalharness/README.md."""

from __future__ import annotations

import os

# Before anything imports litellm / tau2 / bfcl_eval: no price-map download, no hub lookups.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from . import versions  # noqa: E402
from .common import (  # noqa: E402
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    BadInput,
    HarnessError,
    OutputGuard,
    TrialResult,
    agent_api_key,
    exception_text,
    print_json_line,
    user_api_key,
)

BENCHES = ("bfcl", "tau2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cm2_eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tasks = sub.add_parser("tasks", help="list task ids of one category")
    tasks.add_argument("--bench", required=True)
    tasks.add_argument("--category", required=True)

    ref = sub.add_parser("reference", help="ground truth of one task (for scripted test doubles)")
    ref.add_argument("--bench", required=True)
    ref.add_argument("--category", required=True)
    ref.add_argument("--task", required=True)

    run = sub.add_parser("run", help="run one task trial against an OpenAI-compatible endpoint")
    run.add_argument("--bench", required=True)
    run.add_argument("--category", required=True)
    run.add_argument("--task", required=True)
    run.add_argument("--trial", type=int, default=0)
    run.add_argument("--root", required=True, help="the only output directory of this trial")
    run.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, including /v1")
    run.add_argument("--model", required=True)
    run.add_argument("--user-base-url", default=None, help="tau2 user simulator endpoint (default: --base-url)")
    run.add_argument("--user-model", default=None, help="tau2 user simulator model (default: --model)")
    run.add_argument("--max-tokens", type=int, default=512)
    run.add_argument("--max-steps", type=int, default=30)
    run.add_argument("--temperature", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    return parser


def _check_bench(bench: str) -> None:
    if bench not in BENCHES:
        raise BadInput(f"unknown bench {bench!r}; allowed: {', '.join(BENCHES)}")


def _with_scratch_bfcl_root():
    """bfcl_eval creates result/, score/ and .file_locks/ under BFCL_PROJECT_ROOT at import time: keep them in a
    scratch dir for the commands that have no --root (default would be inside site-packages)."""
    scratch = tempfile.mkdtemp(prefix="cm2-eval-bfcl-")
    os.environ["BFCL_PROJECT_ROOT"] = scratch
    return scratch


def _cmd_tasks(args: argparse.Namespace) -> dict:
    _check_bench(args.bench)
    if args.bench == "bfcl":
        from . import bfcl_runner

        bfcl_runner.check_category(args.category)
        ids = bfcl_runner.list_tasks(args.category)
    else:
        from . import tau2_runner

        tau2_runner.check_category(args.category)
        ids = tau2_runner.list_tasks(args.category)
    return {
        "bench": args.bench,
        "version": versions.version_string(args.bench),
        "category": args.category,
        "tasks": ids,
    }


def _cmd_reference(args: argparse.Namespace) -> dict:
    _check_bench(args.bench)
    if args.bench == "bfcl":
        from . import bfcl_runner

        bfcl_runner.check_category(args.category)
        ref = bfcl_runner.reference(args.category, args.task)
    else:
        from . import tau2_runner

        tau2_runner.check_category(args.category)
        ref = tau2_runner.reference(args.category, args.task)
    ref["version"] = versions.version_string(args.bench)
    return ref


def _validate_run_args(args: argparse.Namespace) -> None:
    _check_bench(args.bench)
    if args.trial < 0:
        raise BadInput(f"--trial must be >= 0, got {args.trial}")
    if args.max_tokens <= 0:
        raise BadInput(f"--max-tokens must be > 0, got {args.max_tokens}")
    if args.max_steps <= 0:
        raise BadInput(f"--max-steps must be > 0, got {args.max_steps}")
    if not (args.base_url.startswith("http://") or args.base_url.startswith("https://")):
        raise BadInput(f"--base-url must be an http(s) URL, got {args.base_url!r}")
    if "_" in args.model and args.bench == "bfcl":
        pass  # fine: the model name is only sent to the endpoint; BFCL's registry name is fixed (cm2-eval)


def _cmd_run(args: argparse.Namespace) -> TrialResult:
    _validate_run_args(args)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.bench == "bfcl":
        bfcl_root = root / "bfcl-project"
        os.environ["BFCL_PROJECT_ROOT"] = str(bfcl_root)
        os.environ["OPENAI_BASE_URL"] = args.base_url.rstrip("/")
        os.environ["OPENAI_API_KEY"] = agent_api_key()
        from . import bfcl_runner

        bfcl_runner.check_category(args.category)
        return bfcl_runner.run(
            category=args.category,
            task_id=args.task,
            trial=args.trial,
            root=root,
            model=args.model,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            max_steps=args.max_steps,
            seed=args.seed,
        )
    from . import tau2_runner

    tau2_runner.check_category(args.category)
    return tau2_runner.run(
        category=args.category,
        task_id=args.task,
        trial=args.trial,
        root=root,
        base_url=args.base_url,
        model=args.model,
        user_base_url=args.user_base_url or args.base_url,
        user_model=args.user_model or args.model,
        agent_key=agent_api_key(),
        user_key=user_api_key(),
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        max_steps=args.max_steps,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    guard = OutputGuard()
    scratch: str | None = None
    started = time.time()
    try:
        if args.command in ("tasks", "reference"):
            scratch = _with_scratch_bfcl_root()
            try:
                obj = _cmd_tasks(args) if args.command == "tasks" else _cmd_reference(args)
            except HarnessError as exc:
                print(f"cm2_eval: {exc.message}", file=sys.stderr)
                guard.close()
                return exc.exit_code
            print_json_line(obj, guard)
            return EXIT_OK

        try:
            result = _cmd_run(args)
            code = EXIT_OK
        except HarnessError as exc:
            print(f"cm2_eval: {exc.kind}: {exc.message}", file=sys.stderr)
            result = TrialResult(
                error={"kind": exc.kind, "message": exc.message},
                detail={"bench": args.bench, "category": args.category, "task": args.task, "trial": args.trial},
            )
            code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a harness bug: report it, never as a score
            traceback.print_exc()
            result = TrialResult(
                error={"kind": "internal", "message": exception_text(exc)},
                detail={"bench": args.bench, "category": args.category, "task": args.task, "trial": args.trial},
            )
            code = EXIT_INTERNAL
        if result.seconds == 0.0:
            result.seconds = time.time() - started
        guard.print_line(result.to_json())
        return code
    finally:
        guard.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:  # argparse errors: exit 2 with its own message
        code = exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown of half-stopped library threads (litellm/tau2 loggers); output is flushed.
    os._exit(code)
