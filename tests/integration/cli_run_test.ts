/**
 * `cm2 run status` and `cm2 run watch` as a user runs them (client.ts in a child process) when no worker is
 * running: a finished run's status comes from its result, `watch` of a finished run exits, and a running run
 * that no worker serves fails in one line naming the task queue.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { workflowIds } from "../../core/names.ts";
import { ROOT } from "../../scripts/paths.ts";
import { trainingRun } from "../../workflows/training.ts";
import { uniqueQueue, useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

async function cm2(address: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path.join(ROOT, "client.ts"), ...args],
    env: { TEMPORAL_ADDRESS: address },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const r = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

Deno.test({
  name:
    "cm2 run status / watch need no worker for a finished run; a running run without one is named in a line",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const temporal = await useTemporal();
    const stack = await trainingStack(temporal.address);
    try {
      const name = `cli-${crypto.randomUUID().slice(0, 6)}`;
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 1,
        tasksPerIteration: 1,
        groupSize: 2,
      }, name);
      const stop = await stack.startWorkers();
      await stack.client.workflow.execute(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(name),
        args: [{ config }],
      });
      await stop(); // no worker from here on

      const status = await cm2(temporal.address, "run", "status", name);
      assert.equal(status.code, 0, status.err);
      assert.match(status.out, /: completed, iteration 1\/1, policy v1/);
      assert.match(status.out, /it 0: reward /);
      const watch = await cm2(temporal.address, "run", "watch", name);
      assert.equal(watch.code, 0, watch.err);
      assert.match(watch.out, /COMPLETED/);

      const orphan = `cli-orphan-${crypto.randomUUID().slice(0, 6)}`;
      const queue = uniqueQueue("nobody");
      await stack.client.workflow.start(trainingRun, {
        taskQueue: queue,
        workflowId: workflowIds.run(orphan),
        args: [{ config: { ...config, name: orphan } }],
      });
      const stuck = await cm2(temporal.address, "run", "status", orphan);
      assert.equal(stuck.code, 1);
      assert.equal(stuck.err.trim().split("\n").length, 1, stuck.err);
      assert.match(stuck.err, new RegExp(`no worker is polling ${queue}`));
      await stack.client.workflow.getHandle(workflowIds.run(orphan)).terminate("test done");
    } finally {
      await stack.close();
      await temporal.release();
    }
  },
});
