/**
 * A training run that evaluates its checkpoints every iteration (`eval.every: 1`) with BFCL's own harness and
 * checker: each checkpoint is published and checked as for rollouts, one BFCL task is graded, and the score
 * appears in the run's status (`cm2 run status`), the iteration's metrics, the store (`runs/<run>/evals/…`) and
 * the viewer's data.
 * Scripted models and the test trainer (TEST DOUBLES); real Temporal; the real eval harness.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import { NativeConnection, Worker } from "@temporalio/worker";
import { createEvalActivities, evalPaths } from "../../activities/eval.ts";
import { ROOT } from "../../config.ts";
import { workflowIds } from "../../core/names.ts";
import { CachedStore } from "../../store/cached.ts";
import { RunData } from "../../ui/data.ts";
import { formatSummary } from "../../cli/run.ts";
import { trainingRun } from "../../workflows/training.ts";
import { evalWorkflow } from "../../workflows/eval.ts";
import { DEFAULT_SETTINGS } from "../../core/eval.ts";
import { type ArtifactStore, getJson } from "../../store/mod.ts";
import type { IterationMetrics, IterationRewards } from "../../ui/data.ts";
import { scriptedConfig, withTrainingStack } from "../harness/training.ts";
import { uniqueQueue, useTemporal, workflowBundle } from "../harness/temporal.ts";

const ignore = !(await fs.stat(evalPaths(ROOT).python).then(() => true, () => false));

/** An eval worker (workflows and eval activities) on `queue` of the test server; returns its stop. */
async function evalWorker(store: ArtifactStore, queue: string): Promise<() => Promise<void>> {
  const temporal = await useTemporal();
  const nc = await NativeConnection.connect({ address: temporal.address });
  const worker = await Worker.create({
    connection: nc,
    taskQueue: queue,
    workflowBundle: await workflowBundle(),
    activities: createEvalActivities({ store, cached: new CachedStore(store), root: ROOT }),
  });
  const running = worker.run();
  return async () => {
    worker.shutdown();
    await running;
    await nc.close();
    await temporal.release();
  };
}

Deno.test({
  name: "a run with eval.every 1 grades each checkpoint on BFCL and shows the score in its status and store",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await withTrainingStack({}, async (stack) => {
      const name = `evalrun-${crypto.randomUUID().slice(0, 6)}`;
      const evalQueue = uniqueQueue("eval");
      const base = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 2,
        tasksPerIteration: 1,
        groupSize: 2,
      }, name);
      const config = {
        ...base,
        eval: {
          ...base.eval,
          every: 1,
          categories: ["multi_turn_base"],
          limit: 1,
          taskQueue: evalQueue,
          maxTokens: 64,
        },
      };
      const stopWorker = await evalWorker(stack.store, evalQueue);
      try {
        const result = await stack.client.workflow.execute(trainingRun, {
          taskQueue: stack.taskQueue,
          workflowId: workflowIds.run(name),
          args: [{ config }],
        });
        assert.equal(result.recent.length, 2);
        for (const s of result.recent) {
          const evals = s.evals ?? [];
          assert.equal(evals.length, 1, `iteration ${s.iteration} was evaluated`);
          assert.equal(evals[0]!.bench, "bfcl");
          assert.equal(evals[0]!.tasks, 1);
          // The scripted policy answers BFCL's prompts without a tool call: the official checker says 0.
          assert.equal(evals[0]!.score, 0);
          assert.match(formatSummary(s), /eval bfcl\/multi_turn_base: 0\.0% \[0\.0, 0\.0\] over 1 tasks/);
        }
        // Each checkpoint was served for its evaluation (published again, then verified per task).
        assert.ok(
          stack.server.adapterLoads.filter((v) => v === 1).length >= 2,
          "v1 published for rollouts and eval",
        );
        // ... and in the iteration's stored metrics, with the evaluation's seconds.
        const data = new RunData(stack.store);
        const { train } = await data.metrics(name);
        assert.deepEqual(train.map((m) => m.evals?.map((e) => e.score)), [[0], [0]]);
        assert.ok(train.every((m) => (m.phases?.eval ?? 0) > 0));
        const rows = await data.evals(name);
        assert.deepEqual(rows.map((r) => [r.iteration, r.bench, r.category, r.score]), [
          [0, "bfcl", "multi_turn_base", 0],
          [1, "bfcl", "multi_turn_base", 0],
        ]);
        assert.ok(rows.every((r) => r.workflowId.startsWith(`eval/${name}-it-`)), rows[0]!.workflowId);
      } finally {
        await stopWorker();
      }
    });
  },
});

Deno.test({
  name:
    "the checklist benchmark is the validation pass: its episodes' rewards as results, a rerun reads them",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await withTrainingStack({}, async (stack) => {
      const base = scriptedConfig(
        stack.server.url,
        stack.storeRoot,
        stack.trainerQueue,
        { groupSize: 2 },
        "ck",
      );
      const config = {
        ...base,
        temporal: { taskQueue: stack.taskQueue },
        models: { ...base.models, policy: { ...base.models.policy, adapterApi: "none" as const } },
      };
      const evalQueue = uniqueQueue("eval");
      const stopWorker = await evalWorker(stack.store, evalQueue);
      const runName = `ev-${crypto.randomUUID().slice(0, 8)}`;
      const policy = {
        label: "scripted",
        identity: `endpoint ${stack.server.url} policy-model`,
        baseURL: stack.server.url,
        model: "policy-model",
        apiKeyEnv: null,
        serve: null,
      };
      const input = {
        policy,
        bench: "checklist" as const,
        categories: ["held-out"],
        limit: null,
        trials: 2,
        concurrency: 1,
        seed: 0,
        settings: DEFAULT_SETTINGS,
        userApiKeyEnv: null,
        taskTimeoutS: 600,
        policyKey: "scripted-0123456789",
        checklist: { config, runName, parent: null, version: 0, benchmark: "checklist-test" },
      };
      try {
        const first = await stack.client.workflow.execute(evalWorkflow, {
          taskQueue: evalQueue,
          workflowId: `eval/test/${runName}/1`,
          args: [input],
        });
        // The validation pass's stored rewards, episode by episode, are the results.
        const metricsRef = await stack.store.getName(`runs/${runName}/metrics/val-0`);
        assert.ok(metricsRef, "the pass stored its metrics");
        const metrics = await getJson<IterationMetrics>(stack.store, metricsRef);
        const rewards = await getJson<IterationRewards>(stack.store, metrics.rewards);
        const stored = rewards.groups.flatMap((g) =>
          g.episodes.map((e, k) => [g.uuid, k, e.ok ? e.reward : 0])
        );
        assert.equal(stored.length, 2 * 2, "2 held-out records × 2 samples");
        assert.deepEqual(first.results.map((r) => [r.task, r.trial, r.error ? 0 : r.score]), stored);
        assert.equal(first.summary[0]!.bench, "checklist");
        assert.ok(
          Math.abs(first.summary[0]!.score - metrics.meanReward) < 1e-9 ||
            rewards.groups.some((g) => g.episodes.some((e) => !e.ok)),
        );
        // Again: the stored pass answers, no model is called.
        const calls = stack.server.calls.length;
        const again = await stack.client.workflow.execute(evalWorkflow, {
          taskQueue: evalQueue,
          workflowId: `eval/test/${runName}/2`,
          args: [input],
        });
        assert.equal(stack.server.calls.length, calls);
        assert.ok(
          again.results.every((r) => r.reused),
          JSON.stringify(again.results.map((r) => [r.name, r.reused])),
        );
        assert.deepEqual(again.summary, first.summary);
      } finally {
        await stopWorker();
      }
    });
  },
});
