import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { Client } from "@temporalio/client";
import { NativeConnection } from "@temporalio/worker";
import { ROOT } from "../../config.ts";
import { workflowIds } from "../../core/names.ts";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";
import { FsStore } from "../../store/fs_store.ts";
import { trainingRun } from "../../workflows/training.ts";
import { startScriptedServer } from "../scripted_server.ts";
import { trainingRoles } from "../harness/scripted_models.ts";
import { uniqueQueue } from "../harness/temporal.ts";
import { sampleRecords, scriptedConfig } from "../harness/training.ts";

/**
 * Keeps a worker process running like a service manager would: a process that dies on its own is
 * started again (and counted).
 */
function supervise(name: string, start: () => Deno.ChildProcess) {
  let child = start();
  let stopping = false;
  let restarts = 0;
  const loop = (async () => {
    while (true) {
      const status = await child.status;
      if (stopping) return;
      restarts++;
      console.error(`${name} exited (code ${status.code}, signal ${status.signal}); restarting it`);
      child = start();
    }
  })();
  return {
    get restarts() {
      return restarts;
    },
    async stop() {
      stopping = true;
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 15_000);
      await loop;
      clearTimeout(timer);
    },
  };
}

Deno.test({
  name: "a run continues after the dev server is stopped and restarted on the same SQLite file",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-restart-"));
    const dbFile = path.join(dir, "temporal.sqlite");
    const storeRoot = path.join(dir, "store");
    const port = await freePort();
    let server = await startDevServer({ port, headless: true, dbFile, reuse: false });
    const records = await sampleRecords();
    const models = startScriptedServer({
      roles: trainingRoles(records),
      adapters: true,
      latencyMs: 20,
    });
    const taskQueue = uniqueQueue("restart");
    const trainerQueue = uniqueQueue("restart-trainer");
    // Workers run as their own processes (as in production), supervised.
    const orchestrator = supervise("worker", () => spawnWorker(server.address, taskQueue, storeRoot));
    const trainer = supervise("trainer", () =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          path.join(ROOT, "tests/harness/test_trainer_worker.ts"),
          "--task-queue",
          trainerQueue,
          "--store",
          storeRoot,
        ],
        env: { TEMPORAL_ADDRESS: server.address },
        stdout: "null",
        stderr: "inherit",
      }).spawn());
    const connection = await NativeConnection.connect({ address: server.address });
    const client = new Client({ connection });
    try {
      const config = scriptedConfig(models.url, storeRoot, trainerQueue, {
        iterations: 2,
        tasksPerIteration: 2,
        groupSize: 2,
        episodeConcurrency: 4,
      }, `restart-${crypto.randomUUID().slice(0, 6)}`);
      const handle = await client.workflow.start(trainingRun, {
        taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      while (models.calls.length < 20) await new Promise((r) => setTimeout(r, 50));
      const before = models.calls.length;
      await server.stop();
      await new Promise((r) => setTimeout(r, 1_000));
      server = await startDevServer({ port, headless: true, dbFile, reuse: false });
      const result = await handle.result();
      assert.equal(result.iterations, 2);
      assert.equal(result.policyVersion, 2);
      assert.ok(models.calls.length > before, "work went on after the restart");
      const store = new FsStore(storeRoot);
      assert.deepEqual(await store.listNames(`runs/${config.name}/checkpoints/`), [
        `runs/${config.name}/checkpoints/it-0`,
        `runs/${config.name}/checkpoints/it-1`,
      ]);
      assert.equal(orchestrator.restarts, 0, "the orchestrator worker rode out the restart");
      assert.equal(trainer.restarts, 0, "the trainer worker rode out the restart");
    } finally {
      await orchestrator.stop();
      await trainer.stop();
      await connection.close();
      await models.close();
      await server.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  },
});
