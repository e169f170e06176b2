/**
 * `pipelineRun` on the real Temporal dev server with the scripted models and the test trainer: the sample data
 * goes through import, rule filter, split, SFT and RL, each stage's output feeding the next; the pipeline
 * survives its workers being stopped and started again mid-run, and a re-run skips every finished stage.
 */
import assert from "node:assert/strict";
import { workflowIds } from "../../core/names.ts";
import { parsePipelineRecipe } from "../../core/pipeline.ts";
import { datasetRef, loadManifest } from "../../store/datasets.ts";
import { pipelineRun, pipelineStatusQuery } from "../../workflows/pipeline.ts";
import { promptVersionsOf, watchPipeline } from "../../cli/pipeline.ts";
import { scriptedConfig, withTrainingStack } from "../harness/training.ts";

Deno.test({
  name:
    "a pipeline runs filter → split → sft → rl on the sample data, survives a worker SIGKILL, re-runs for free",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withTrainingStack({
      roles: { "labeler-model": () => ({ json: { problems: [], keep: true } }) },
      killable: true,
    }, async (stack, restart) => {
      const name = `pipe-${crypto.randomUUID().slice(0, 6)}`;
      const parsed = parsePipelineRecipe({
        name,
        input: "data/sample/tooltalk_sample.jsonl",
        stages: [
          { stage: "filter" },
          { stage: "filter-llm" },
          { stage: "compress-cot" },
          { stage: "split", heldOut: 2, rl: 4 },
          { stage: "sft" },
          { stage: "rl", baseline: true },
        ],
      });
      assert.ok(parsed.ok, JSON.stringify(parsed));
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 1,
        tasksPerIteration: 1,
        groupSize: 2,
        validationEvery: 1,
        validationTasks: 2,
      }, name);
      const handle = await stack.client.workflow.start(pipelineRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.pipeline(name),
        args: [{ recipe: parsed.recipe, config, promptVersions: promptVersionsOf(parsed.recipe, config) }],
      });
      // kill the orchestrator worker (SIGKILL) once the RL run has started, start another: the pipeline carries on
      for (let i = 0; i < 600; i++) {
        const s = await handle.query(pipelineStatusQuery);
        if (s.stages.at(-1)!.status === "running") break;
        await new Promise((r) => setTimeout(r, 100));
      }
      await restart();
      const lines: string[] = [];
      const results = await watchPipeline(stack.client, handle, (line) => lines.push(line));
      assert.deepEqual(await handle.result(), results);
      // one line per stage, in order, whether seen running or only at the end
      assert.deepEqual(lines.map((l) => l.split(":")[0]), results.map((r, k) => `[${k + 1}/7] ${r.stage}`));
      assert.deepEqual(results.map((r) => r.stage), [
        "import",
        "filter",
        "filter-llm",
        "compress-cot",
        "split",
        "sft",
        "rl",
      ]);
      assert.equal(results[0]!.dataset, `datasets/${name}-raw`);
      assert.equal(results[1]!.dataset, `datasets/${name}-filtered`);
      assert.equal(results[2]!.dataset, `datasets/${name}-llm`);
      assert.match(results[2]!.summary, /kept 10, rejected 0/);
      assert.equal(results[3]!.dataset, `datasets/${name}-cot`);
      assert.match(results[3]!.summary, /no-reasoning 10/);
      assert.equal(stack.server.countBy()["labeler-model"], 10, "one LLM-filter call per record");
      assert.deepEqual(results[4]!.split, {
        sft: `datasets/${name}-sft`,
        rl: `datasets/${name}-rl`,
        heldOut: `datasets/${name}-heldout`,
        heldOutCount: 2,
      });
      // SFT trained on the split's SFT part with its held-out part; RL started from the SFT checkpoint
      const sftRef = await datasetRef(stack.store, `${name}-sft`);
      const heldRef = await datasetRef(stack.store, `${name}-heldout`);
      const sftCalls = (stack.trainerLog.sftCalls ?? []).filter((c) => c.runId === name);
      assert.deepEqual(sftCalls.map((c) => [c.dataset, c.heldOut]), [[sftRef!.uri, heldRef!.uri]]);
      const final = await stack.store.getName(`sft/${name}/final`);
      const updates = stack.trainerLog.calls.filter((c) => c.runId === name && !c.reused);
      assert.deepEqual(updates.map((c) => c.init), [final!.uri]);
      // the RL run trained on the RL part (its held-out records at the end)
      const rl = await loadManifest(stack.store, (await datasetRef(stack.store, `${name}-rl`))!);
      assert.equal(rl.count, 6);
      assert.match(results[6]!.summary, /1 iterations, policy v1/);
      // validated before and after the update, and the raw base model once (no SFT adapter, no update)
      assert.match(
        results[6]!.summary,
        /validation at 0: [\d.]+; validation at 1: [\d.]+; base model validation/,
      );
      const base = await stack.client.workflow.getHandle(workflowIds.run(`${name}-base`)).result();
      assert.deepEqual(
        base.recent.map((
          s: { iteration: number; validation: boolean; policyVersion: number; episodes: number },
        ) => [
          s.iteration,
          s.validation,
          s.policyVersion,
          s.episodes,
        ]),
        [[0, true, 0, 4]],
      );
      assert.equal(stack.trainerLog.calls.filter((c) => c.runId === `${name}-base`).length, 0);

      // a re-run skips every finished stage: no SFT or update call, the same results
      const calls = stack.trainerLog.calls.length + (stack.trainerLog.sftCalls?.length ?? 0);
      const again = await stack.client.workflow.execute(pipelineRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.pipeline(name),
        args: [{ recipe: parsed.recipe, config, promptVersions: promptVersionsOf(parsed.recipe, config) }],
      });
      assert.deepEqual(again, results);
      assert.equal(stack.trainerLog.calls.length + (stack.trainerLog.sftCalls?.length ?? 0), calls);
    });
  },
});

Deno.test("pipeline recipes are checked: unknown stages, order and repeats are named", () => {
  const late = parsePipelineRecipe({
    name: "x",
    input: "d",
    stages: [{ stage: "split" }, { stage: "filter-llm" }],
  });
  assert.ok(!late.ok);
  assert.match(late.issues.join("\n"), /stages\.1: stage filter-llm must come before split/);
  const bad = parsePipelineRecipe({
    name: "x",
    input: "data.jsonl",
    stages: [{ stage: "sft" }, { stage: "split" }, { stage: "split" }, { stage: "dance" }],
  });
  assert.ok(!bad.ok);
  const text = bad.issues.join("\n");
  assert.match(text, /stages\.3\.stage: /);
  const order = parsePipelineRecipe({
    name: "x",
    input: "d",
    stages: [{ stage: "sft" }, { stage: "split" }],
  });
  assert.ok(!order.ok);
  assert.match(order.issues.join("\n"), /stages\.0: stage sft must come after split/);
  const twice = parsePipelineRecipe({
    name: "x",
    input: "d",
    stages: [{ stage: "filter" }, { stage: "filter" }],
  });
  assert.ok(!twice.ok);
  assert.match(twice.issues.join("\n"), /stages\.1: stage filter appears twice/);
  const lone = parsePipelineRecipe({ name: "x", input: "d", stages: [{ stage: "sft" }] });
  assert.ok(!lone.ok);
  assert.match(lone.issues.join("\n"), /stage sft needs a split stage before it/);
});

Deno.test({
  name: "a pipeline whose split leaves nothing for SFT fails at the sft stage, saying so",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withTrainingStack({}, async (stack) => {
      const name = `nosft-${crypto.randomUUID().slice(0, 6)}`;
      const parsed = parsePipelineRecipe({
        name,
        input: "data/sample/tooltalk_sample.jsonl",
        stages: [{ stage: "split", sft: 0, heldOut: 1 }, { stage: "sft" }],
      });
      assert.ok(parsed.ok);
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {}, name);
      await assert.rejects(
        stack.client.workflow.execute(pipelineRun, {
          taskQueue: stack.taskQueue,
          workflowId: workflowIds.pipeline(name),
          args: [{ recipe: parsed.recipe, config, promptVersions: promptVersionsOf(parsed.recipe, config) }],
        }),
        (err: Error) => {
          assert.match(String((err.cause as Error | undefined)?.message), /the split left no record for SFT/);
          return true;
        },
      );
      assert.equal(stack.trainerLog.sftCalls, undefined, "no SFT call");
    });
  },
});
