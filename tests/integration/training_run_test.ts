import assert from "node:assert/strict";
import { workflowIds } from "../../core/sampling.ts";
import { statusQuery, trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

const MAX_PAYLOAD = 64 * 1024;

Deno.test({
  name: "trainingRun() completes iterations end to end with one update and one verified publish per iteration",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    const stack = await trainingStack(temporal.address);
    const stop = await stack.startWorkers();
    try {
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 2,
        tasksPerIteration: 2,
        groupSize: 3,
        episodeConcurrency: 4,
        validationEvery: 2,
        validationTasks: 1,
      }, `e2e-${crypto.randomUUID().slice(0, 6)}`);
      const handle = await stack.client.workflow.start(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      const result = await handle.result();
      assert.equal(result.iterations, 2);
      assert.equal(result.policyVersion, 2);
      assert.deepEqual(stack.server.adapterLoads, [1, 2]);
      assert.deepEqual([...stack.trainerLog.applied.values()], [1, 1]);
      const train = result.recent.filter((r) => !r.validation);
      const val = result.recent.filter((r) => r.validation);
      assert.equal(train.length, 2);
      assert.equal(val.length, 1, "one validation pass at iteration 0");
      for (const s of train) {
        assert.equal(s.episodes, 6);
        assert.ok(s.meanReward >= 0 && s.meanReward <= 1, `reward ${s.meanReward}`);
        assert.ok(s.judgeCalls > 0);
        assert.ok(s.replayHits > 0, "the reference policy's calls replay");
        assert.notEqual(s.updateLoss, null);
      }
      const status = await handle.query(statusQuery);
      assert.equal(status.phase, "completed");
      // Every payload in the recorded histories stays far below Temporal's limits.
      const ids = [
        workflowIds.run(config.name),
        workflowIds.iteration(config.name, 0),
        workflowIds.episode(config.name, 0, 0, 0),
      ];
      for (const id of ids) {
        const history = await stack.client.workflow.getHandle(id).fetchHistory();
        let biggest = 0;
        const walk = (v: unknown): void => {
          if (v && typeof v === "object") {
            const o = v as Record<string, unknown>;
            if (o.data instanceof Uint8Array && "metadata" in o) biggest = Math.max(biggest, o.data.byteLength);
            for (const x of Object.values(o)) walk(x);
          }
        };
        walk(history.events);
        assert.ok(biggest > 0, `found payloads in ${id}`);
        assert.ok(biggest < MAX_PAYLOAD, `${id}: largest payload ${biggest} bytes`);
      }
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});
