import assert from "node:assert/strict";
import { workflowIds } from "../../core/names.ts";
import { statusQuery, trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack, withTrainingStack } from "../harness/training.ts";

const MAX_PAYLOAD = 64 * 1024;

Deno.test({
  name:
    "trainingRun() completes iterations end to end with one update and one verified publish per iteration",
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
        validationSamples: 2,
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
      assert.deepEqual(
        val.map((v) => [v.iteration, v.episodes, v.policyVersion]),
        [[0, 2, 0], [2, 2, 2]],
        "validation passes before the first update and after the last, 2 samples of the held-out task each",
      );
      for (const s of train) {
        assert.equal(s.episodes, 6);
        assert.ok(s.meanReward >= 0 && s.meanReward <= 1, `reward ${s.meanReward}`);
        assert.ok(s.judgeCalls > 0);
        // the sample's call items are program-checked: counted apart from the judge's calls
        assert.ok((s.checkedVerdicts ?? 0) > 0, `checked ${s.checkedVerdicts}`);
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
            if (o.data instanceof Uint8Array && "metadata" in o) {
              biggest = Math.max(biggest, o.data.byteLength);
            }
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

for (const api of ["vllm", "sglang"] as const) {
  Deno.test({
    name: `publishPolicy() loads each adapter into a ${api} server by name and rollouts use it`,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const temporal = await useTemporal();
      const stack = await trainingStack(temporal.address);
      const stop = await stack.startWorkers();
      try {
        const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
          iterations: 2,
          tasksPerIteration: 1,
          groupSize: 2,
        }, `${api}-${crypto.randomUUID().slice(0, 6)}`);
        config.models.policy.adapterApi = api;
        const result = await stack.client.workflow.execute(trainingRun, {
          taskQueue: stack.taskQueue,
          workflowId: workflowIds.run(config.name),
          args: [{ config }],
        });
        assert.equal(result.policyVersion, 2);
        const names = stack.server.loraLoads.map((l) => l.name);
        assert.deepEqual(names, [`${config.name}-v1`, `${config.name}-v2`]);
        assert.ok(
          stack.server.loraLoads.every((l) =>
            l.route === (api === "vllm" ? "/v1/load_lora_adapter" : "/load_lora_adapter")
          ),
        );
        for (const l of stack.server.loraLoads) {
          const files = [...Deno.readDirSync(l.path)].map((e) => e.name).sort();
          assert.deepEqual(files, [".complete", "adapter.json"], `adapter files in ${l.path}`);
        }
        const byModel = stack.server.countBy();
        assert.ok(
          (byModel[`${config.name}-v1`] ?? 0) > 0,
          `iteration 1 rollouts ask for the v1 adapter: ${JSON.stringify(byModel)}`,
        );
        assert.equal(byModel[`${config.name}-v2`] ?? 0, 0, "no rollout after the last update");
      } finally {
        await stop();
        await stack.close();
        await temporal.release();
      }
    },
  });
}

Deno.test({
  name:
    "trainer.init starts RL from an SFT checkpoint: served as v0, sent with every update; a mismatch is named",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const { putJson } = await import("../../store/mod.ts");
    await withTrainingStack({}, async (stack) => {
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 2,
        tasksPerIteration: 1,
        groupSize: 2,
      }, `init-${crypto.randomUUID().slice(0, 6)}`);
      config.models.policy.adapterApi = "vllm";
      // an SFT checkpoint as the trainer writes it (`cm2.sft-checkpoint/v1`, LoRA, same base and shape)
      const adapter = await putJson(stack.store, { fake: "sft adapter" });
      const manifest = await putJson(stack.store, {
        schema: "cm2.sft-checkpoint/v1",
        runId: "warm",
        step: 10,
        steps: 10,
        base: config.trainer.base,
        finetune: "lora",
        files: { "adapter.json": adapter },
        metrics: { loss: 0.5, heldOutLoss: null },
        sft: { loraRank: config.trainer.loraRank, loraAlpha: config.trainer.loraAlpha },
        createdAt: new Date().toISOString(),
      });
      await stack.store.setName("sft/warm/final", manifest);
      config.trainer.init = "sft/warm/final";
      const result = await stack.client.workflow.execute(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      assert.equal(result.policyVersion, 2);
      // the SFT adapter goes live first, as version 0, and iteration 0's rollouts use it
      assert.deepEqual(stack.server.loraLoads.map((l) => l.name), [
        `${config.name}-v0`,
        `${config.name}-v1`,
        `${config.name}-v2`,
      ]);
      assert.ok(
        (stack.server.countBy()[`${config.name}-v0`] ?? 0) > 0,
        JSON.stringify(stack.server.countBy()),
      );
      // every update carries the SFT checkpoint: the trainer's KL reference
      const updates = stack.trainerLog.calls.filter((c) => c.runId === config.name && !c.reused);
      assert.deepEqual(updates.map((c) => c.init), [manifest.uri, manifest.uri]);

      // a checkpoint of another LoRA shape is refused before any rollout, naming both values
      const other = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 1,
        tasksPerIteration: 1,
        groupSize: 2,
      }, `init-bad-${crypto.randomUUID().slice(0, 6)}`);
      other.trainer.init = "sft/warm/final";
      other.trainer.loraRank = config.trainer.loraRank * 2;
      await assert.rejects(
        stack.client.workflow.execute(trainingRun, {
          taskQueue: stack.taskQueue,
          workflowId: workflowIds.run(other.name),
          args: [{ config: other }],
        }),
        (err: Error) => {
          const text = `${err.message} ${(err.cause as Error | undefined)?.message ?? ""} ${
            ((err.cause as Error | undefined)?.cause as Error | undefined)?.message ?? ""
          }`;
          assert.match(
            text,
            /trainer\.init sft\/warm\/final: has LoRA rank 8 alpha 16; trainer\.loraRank\/loraAlpha are 16\/16/,
          );
          return true;
        },
      );
    });
  },
});

Deno.test({
  name: "an iteration in which every episode fails makes no update and the run goes on",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withTrainingStack({
      roles: { "judge-model": () => ({ content: "I think it is fine." }) },
    }, async (stack) => {
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 2,
        tasksPerIteration: 1,
        groupSize: 2,
      }, `allfail-${crypto.randomUUID().slice(0, 6)}`);
      const result = await stack.client.workflow.execute(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      assert.equal(result.iterations, 2);
      assert.equal(result.policyVersion, 0, "no update was applied");
      assert.deepEqual(result.recent.map((s) => [s.failed, s.episodes, s.updateLoss]), [[2, 2, null], [
        2,
        2,
        null,
      ]]);
      assert.equal(
        stack.trainerLog.calls.filter((c) => c.runId === config.name).length,
        0,
        "no trainer call",
      );
    });
  },
});
