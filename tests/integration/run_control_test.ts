import assert from "node:assert/strict";
import * as path from "node:path";
import { ROOT } from "../../config.ts";
import { workflowIds } from "../../core/names.ts";
import { resumeSignal, statusQuery, stopSignal, trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Timed out waiting for ${what}`);
}

async function cli(address: string, ...args: string[]): Promise<{ code: number; out: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path.join(ROOT, "client.ts"), ...args],
    env: { TEMPORAL_ADDRESS: address },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, out: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

Deno.test({
  name: "a run pauses between iterations, resumes, stops after the current iteration, and shows in search",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    const stack = await trainingStack(temporal.address, { latencyMs: 20 });
    const stop = await stack.startWorkers();
    try {
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 4,
        tasksPerIteration: 1,
        groupSize: 2,
        continueAsNewEvery: 1,
      }, `ctl-${crypto.randomUUID().slice(0, 6)}`);
      const id = workflowIds.run(config.name);
      await stack.client.workflow.start(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: id,
        args: [{ config }],
        searchAttributes: { Cm2RunName: [config.name] },
      });
      // Pause through the CLI, as a user would.
      const paused = await cli(temporal.address, "run", "pause", config.name);
      assert.equal(paused.code, 0, paused.out);
      const handle = stack.client.workflow.getHandle(id);
      const atPause = await until("the paused phase", async () => {
        const s = await handle.query(statusQuery);
        return s.phase === "paused" ? s : undefined;
      });
      await new Promise((r) => setTimeout(r, 1_500));
      const still = await handle.query(statusQuery);
      assert.equal(still.iteration, atPause.iteration, "no iteration starts while paused");
      const status = await cli(temporal.address, "run", "status", config.name);
      assert.match(status.out, /paused/);
      await handle.signal(resumeSignal);
      // Continue-as-new happens after every iteration: the run id stays, the state carries over.
      await until("iteration 2", async () => {
        const s = await stack.client.workflow.getHandle(id).query(statusQuery);
        return s.iteration >= 2 ? s : undefined;
      });
      await stack.client.workflow.getHandle(id).signal(stopSignal);
      const result = await stack.client.workflow.getHandle(id).result();
      assert.equal(result.stopped, true);
      assert.ok(result.iterations >= 2 && result.iterations < 4, `stopped after ${result.iterations}`);
      assert.equal(result.policyVersion, result.iterations, "every finished iteration was published");
      assert.deepEqual(stack.server.adapterLoads, Array.from({ length: result.iterations }, (_, i) => i + 1));
      const found = await until("the run in visibility", async () => {
        for await (const wf of stack.client.workflow.list({ query: `Cm2RunName = '${config.name}'` })) {
          const sa = wf.searchAttributes as Record<string, unknown[] | undefined>;
          if (sa.Cm2Status?.[0] === "stopped") return wf;
        }
        return undefined;
      });
      assert.equal(
        (found.searchAttributes as Record<string, unknown[]>).Cm2Iteration?.[0],
        result.iterations,
      );
      const list = await cli(temporal.address, "run", "list");
      assert.match(list.out, new RegExp(config.name));
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});
