import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { workflowIds } from "../../core/sampling.ts";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { trainingRun } from "../../workflows/training.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

Deno.test({
  name: "a run continues after the dev server is stopped and restarted on the same SQLite file",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-restart-"));
    const dbFile = path.join(dir, "temporal.sqlite");
    const port = await freePort();
    let server = await startDevServer({ port, headless: true, dbFile, reuse: false });
    const stack = await trainingStack(server.address, { latencyMs: 20 });
    const stop = await stack.startWorkers();
    try {
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 2,
        tasksPerIteration: 2,
        groupSize: 2,
        episodeConcurrency: 4,
      }, `restart-${crypto.randomUUID().slice(0, 6)}`);
      const handle = await stack.client.workflow.start(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      while (stack.server.calls.length < 20) await new Promise((r) => setTimeout(r, 50));
      const before = stack.server.calls.length;
      await server.stop();
      await new Promise((r) => setTimeout(r, 1_000));
      server = await startDevServer({ port, headless: true, dbFile, reuse: false });
      const result = await handle.result();
      assert.equal(result.iterations, 2);
      assert.equal(result.policyVersion, 2);
      assert.ok(stack.server.calls.length > before, "work went on after the restart");
      assert.deepEqual([...stack.trainerLog.applied.values()], [1, 1]);
    } finally {
      await stop();
      await stack.close();
      await server.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  },
});
