"""Temporal worker for the trainer: hosts the `updatePolicy` and `sftTrain` activities on task queue `cm2-trainer`.

    python -m cm2_trainer.worker [--address HOST:PORT] [--namespace NS] [--store URL] ...

One activity at a time (`max_concurrent_activities=1`; the GPU is the unit of work), both sharing one cached
base model. An activity takes one JSON object and returns one (camelCase, tests/contracts/README.md),
heartbeats while it trains, and raises `ApplicationError` with a type from `contract.ERROR_TYPES`; bad input
is `InvalidBatch`, non-retryable. SIGTERM/SIGINT stop polling, let the running activity finish within the
graceful timeout, and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any, Callable, Iterator

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from . import contract
from .config import TrainerConfig, help_text
from .store import InvalidRef, InvalidStoreUrl, MissingArtifact, StoreCorruption, store_url_arg

log = logging.getLogger("cm2_trainer.worker")


async def connect_when_ready(address: str, namespace: str = "default", wait_seconds: float = 60.0) -> Client:
    """Connects to Temporal, retrying while the server is still starting.

    An open port is not a ready server: a dev server answers "Frontend is not healthy yet" for a few seconds after
    it starts listening, longer on a slow machine. The last error is raised once `wait_seconds` have passed.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return await Client.connect(address, namespace=namespace)
        except RuntimeError as e:  # the bridge raises RuntimeError("Failed client connect: …")
            if time.monotonic() >= deadline:
                raise
            log.info("Temporal at %s not ready (%s); retrying", address, str(e).splitlines()[0][:200])
            await asyncio.sleep(0.5)


def make_update_activity(
    *,
    defaults: TrainerConfig | None = None,
    store_url: str | None = None,
    cache: Any = None,
    keepalive_s: float = 20.0,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Build the `updatePolicy` activity (a plain sync function run in the worker's thread pool). `store_url`,
    when given, replaces each request's `storeUrl` (the trainer host reaches the store another way)."""
    from .update import ModelCache, update_policy

    model_cache = cache or ModelCache()
    return _activity(
        contract.ACTIVITY_NAME,
        contract.decode_update_request,
        lambda r, beat: update_policy(r, heartbeat=beat, cache=model_cache, defaults=defaults),
        contract.decode_result,
        lambda req, out: f"iteration={req.iteration} reused={out['reused']} metrics={out['metrics']}",
        store_url,
        keepalive_s,
    )


def make_sft_activity(
    *,
    defaults: TrainerConfig | None = None,
    store_url: str | None = None,
    cache: Any = None,
    keepalive_s: float = 20.0,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Build the `sftTrain` activity (cold-start SFT, sft.py). `defaults` gives the machinery (device, dtype,
    micro-batch size, LoRA target modules, AdamW betas/eps/weight decay); the request's `sft` the rest. Share
    `cache` with `updatePolicy`'s: a LoRA SFT and the RL updates train on the same cached base."""
    from .sft import sft_train
    from .update import ModelCache

    model_cache = cache or ModelCache()
    return _activity(
        contract.SFT_ACTIVITY_NAME,
        contract.decode_sft_request,
        lambda r, beat: sft_train(r, heartbeat=beat, cache=model_cache, defaults=defaults),
        contract.decode_sft_result,
        lambda req, out: f"steps={out['steps']} reused={out['reused']} history={out['history']}",
        store_url,
        keepalive_s,
    )


def _activity(
    name: str,
    decode: Callable[[Any], Any],
    run: Callable[[Any, Any], Any],
    check: Callable[[Any], Any],
    describe: Callable[[Any, dict[str, Any]], str],
    store_url: str | None,
    keepalive_s: float,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A trainer activity named `name`: decode, run (see :func:`_run`), check the result against the contract and
    log one line."""

    @activity.defn(name=name)
    def trainer_activity(request: dict[str, Any]) -> dict[str, Any]:
        req, result = _run(name, request, decode, run, store_url, keepalive_s)
        out = result.to_json()
        check(out)
        log.info("%s run=%s %s", name, req.run_id, describe(req, out))
        return out

    return trainer_activity


def _run(
    name: str,
    request: dict[str, Any],
    decode: Callable[[Any], Any],
    run: Callable[[Any, Any], Any],
    store_url: str | None,
    keepalive_s: float,
) -> tuple[Any, Any]:
    """One trainer activity: decode the request (the worker's `--store` replacing its store URL), run it with a
    keepalive heartbeat, map the trainer's exceptions to typed errors, and give the memory back."""
    info = activity.info()
    with _typed_errors():
        req = decode(request)
        if store_url is not None:
            req = replace(req, store_url=store_url)
        log.info("%s run=%s attempt=%d", name, req.run_id, info.attempt)
        with _Keepalive(keepalive_s) as beat:
            try:
                result = run(req, beat)
            finally:
                _release_memory()
    return req, result


@contextlib.contextmanager
def _typed_errors() -> Iterator[None]:
    """Map the trainer's exceptions to the contract's non-retryable `ApplicationError` types."""
    from .loss import TrainingDiverged

    try:
        yield
    except (contract.ContractError, InvalidRef, InvalidStoreUrl) as e:
        raise ApplicationError(str(e), type=contract.ERR_INVALID_BATCH, non_retryable=True) from e
    except MissingArtifact as e:
        raise ApplicationError(str(e), type=contract.ERR_MISSING_ARTIFACT, non_retryable=True) from e
    except StoreCorruption as e:
        raise ApplicationError(str(e), type=contract.ERR_STORE_CORRUPTION, non_retryable=True) from e
    except TrainingDiverged as e:
        raise ApplicationError(str(e), type=contract.ERR_TRAINING_DIVERGED, non_retryable=True) from e


def _glibc() -> Any:
    """The C library when it is glibc (malloc_trim, mallopt), else None."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def _release_memory() -> None:
    """Hand the update's freed activations back to the OS between updates (glibc keeps freed heap pages; on a
    CPU host they would count against the rollouts' memory until the next update)."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 1 << 20, arena_max: int = 2) -> bool:
    """Make glibc hand large freed blocks straight back to the OS (CPU training).

    A CPU update allocates and frees activation tensors of a few MB each. glibc's dynamic mmap threshold
    climbs to 32 MB after the first large frees, so from then on those tensors come from the heap, which
    fragments and keeps the pages: replaying the demo's second update (4 samples of ~3k tokens) took the
    process to 6.5 GB RSS. With a fixed 1 MiB threshold (which also turns the dynamic adjustment off) the
    same update peaks at 1.7 GB, for ~25% more time spent faulting fresh pages in. Returns False where
    the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return libc.mallopt(_M_ARENA_MAX, arena_max) == 1 and ok


class _Keepalive:
    """Heartbeats the latest progress now and then every `interval` s from a helper thread, so that phases
    without progress callbacks (loading a large base model, saving) do not hit the heartbeat timeout.
    Cancellation is still delivered to the activity thread (the SDK raises it there)."""

    def __init__(self, interval: float = 20.0) -> None:
        self.interval = interval
        self.ctx = contextvars.copy_context()  # the activity context, usable from the helper thread
        self.progress: dict[str, Any] = {"phase": "start"}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cm2-heartbeat", daemon=True)

    def __call__(self, progress: dict[str, Any]) -> None:
        self.progress = progress
        activity.heartbeat(progress)

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.ctx.run(activity.heartbeat, self.progress)
            except Exception:  # the activity may have just finished
                return

    def __enter__(self) -> "_Keepalive":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def build_worker(
    client: Client,
    executor: ThreadPoolExecutor,
    *,
    task_queue: str = contract.TASK_QUEUE,
    defaults: TrainerConfig | None = None,
    store_url: str | None = None,
    graceful_shutdown: timedelta = timedelta(seconds=30),
) -> Worker:
    from .update import ModelCache

    cache = ModelCache()  # one base in memory for both activities (they never run at the same time)
    return Worker(
        client,
        task_queue=task_queue,
        activities=[
            make_update_activity(defaults=defaults, store_url=store_url, cache=cache),
            make_sft_activity(defaults=defaults, store_url=store_url, cache=cache),
        ],
        activity_executor=executor,
        max_concurrent_activities=1,
        graceful_shutdown_timeout=graceful_shutdown,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m cm2_trainer.worker",
        description="cm2 trainer worker: hosts the Temporal activities `updatePolicy` (one policy update per "
        "run iteration, LoRA on the base model) and `sftTrain` (cold-start SFT on a stored dataset, resumable) "
        "on its own task queue.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trainer defaults (a request's `trainer` object overrides lr, klCoef, clipLow, clipHigh, "
        "clipRatioC, miniBatches, loraRank, loraAlpha, maxGradNorm, seed):\n" + help_text(),
    )
    p.add_argument(
        "--address",
        default=os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
        help="Temporal frontend host:port (env TEMPORAL_ADDRESS, default 127.0.0.1:7233)",
    )
    p.add_argument(
        "--namespace",
        default=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        help="Temporal namespace (env TEMPORAL_NAMESPACE, default 'default')",
    )
    p.add_argument("--task-queue", default=contract.TASK_QUEUE, help="task queue (default %(default)s)")
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        type=store_url_arg,
        help="use this artifact store instead of each request's storeUrl (when the trainer host reaches the "
        "store another way): file:///abs/path, a path, or s3://bucket/prefix?endpoint=http://host:port "
        "(S3 credentials from the environment, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    )
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda:0")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="model dtype (auto: bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=TrainerConfig.micro_batch_size,
        help="samples per forward/backward pass (memory knob; default %(default)s)",
    )
    p.add_argument(
        "--pack-max-tokens",
        type=int,
        default=TrainerConfig.pack_max_tokens,
        help="pack samples that share a prompt into one row of at most this many tokens (0: off; default %(default)s)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (saves memory)")
    p.add_argument(
        "--rollout-is-cap",
        type=float,
        default=None,
        help="truncated importance sampling cap against serving log-probs (off by default; CM2: 2.0)",
    )
    p.add_argument(
        "--graceful-shutdown-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long a running update may go on before it is cancelled",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = p.parse_args(argv)
    return args


async def run(args: argparse.Namespace) -> None:
    from .update import resolve_device

    defaults = TrainerConfig(
        device=args.device,
        dtype=args.dtype,
        micro_batch_size=args.micro_batch_size,
        pack_max_tokens=args.pack_max_tokens,
        gradient_checkpointing=args.gradient_checkpointing,
        rollout_is_cap=args.rollout_is_cap,
    )
    if resolve_device(defaults).type == "cpu":
        log.info(
            "CPU training: glibc mmap threshold 1 MiB, 2 arenas (%s)",
            "set" if tune_malloc() else "not glibc, left as is",
        )
    client = await connect_when_ready(args.address, namespace=args.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm2-update") as executor:
        worker = build_worker(
            client,
            executor,
            task_queue=args.task_queue,
            defaults=defaults,
            store_url=args.store,
            graceful_shutdown=timedelta(seconds=args.graceful_shutdown_seconds),
        )
        async with worker:
            log.info(
                "cm2 trainer worker polling task queue %r on %s namespace %r",
                args.task_queue,
                args.address,
                args.namespace,
            )
            await stop.wait()
            log.info("Shutting down")
    log.info("Stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
