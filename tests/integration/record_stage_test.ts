/**
 * The durable record stages on a real Temporal dev server with the scripted model server playing the
 * labeler: the LLM quality filter and CoT compression each accept, reject and retry with feedback; a re-run
 * of a finished stage makes no call; a budget pauses a run and raising it resumes; the CLI commands run end
 * to end (`data filter --llm --rejected`, `data compress-cot` pausing with exit 3, then resumed).
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { stageNames, type StageReport } from "../../activities/record_stage.ts";
import { ROOT } from "../../config.ts";
import { recordReasoningTokens, splitReasoning, visibleText } from "../../core/cot_compress.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import { costOf } from "../../llm/usage.ts";
import { datasetRef, loadAllRecords, loadManifest } from "../../store/datasets.ts";
import { getJson } from "../../store/mod.ts";
import { WORKER_PERMISSIONS } from "../../scripts/worker_process.ts";
import {
  recordStage,
  setStageBudgetUpdate,
  type StageProgress,
  stageProgressQuery,
  stageWorkflowId,
  stopStageSignal,
} from "../../workflows/record_stage.ts";
import { TEST_PRICES } from "../harness/labeling.ts";
import { type StageScript, type StageStack, stageStack } from "../harness/record_stage.ts";
import {
  compressAnswerFor,
  longReasoning,
  sampleStageRecords,
  withReasoning,
} from "../harness/stage_records.ts";
import { useTemporal } from "../harness/temporal.ts";
import type { WorkflowHandle } from "@temporalio/client";

const samples = await sampleStageRecords();
const CLEAN = { problems: [], keep: true };
const opts = { sanitizeOps: false, sanitizeResources: false };

/** Runs `fn` with a stack, a worker and dataset `src` holding `records`; tears everything down after. */
async function withStack(
  records: readonly TrajectoryRecord[],
  script: StageScript,
  fn: (stack: StageStack, address: string) => Promise<void>,
): Promise<void> {
  const temporal = await useTemporal();
  const stack = await stageStack(temporal.address, script);
  const stopWorker = await stack.startWorker();
  try {
    await stack.saveRecords("src", records);
    await fn(stack, temporal.address);
  } finally {
    await stopWorker();
    await stack.close().finally(() => temporal.release());
  }
}

/** Queries a stage until its progress satisfies `ok` (20 s at most). */
async function untilProgress(
  handle: WorkflowHandle<typeof recordStage>,
  ok: (p: StageProgress) => boolean,
): Promise<StageProgress> {
  for (const deadline = Date.now() + 20_000; Date.now() < deadline;) {
    const progress = await handle.query(stageProgressQuery);
    if (ok(progress)) return progress;
    await delay(100);
  }
  throw new Error("The stage never reached the awaited progress");
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function outputOf(stack: StageStack, name: string): Promise<TrajectoryRecord[]> {
  return await loadAllRecords(
    stack.store,
    await loadManifest(stack.store, (await datasetRef(stack.store, name))!),
  );
}

function byUuid(records: readonly TrajectoryRecord[]): (uuid: string) => TrajectoryRecord {
  const map = new Map(records.map((r) => [r.uuid, r]));
  return (uuid) => map.get(uuid)!;
}

Deno.test({
  ...opts,
  name: "recordStage(filter) keeps clean records, rejects one with its problems, and a re-run calls nothing",
  fn: async () => {
    const [a, b, c] = samples;
    const problem = { kind: "ungrounded_argument", turn: 0, message: "Message 2 invents the password" };
    await withStack([a!, b!, c!], (call) => ({
      json: call.uuid === c!.uuid ? { problems: [problem], keep: false } : CLEAN,
    }), async (stack) => {
      const run = () =>
        stack.client.workflow.execute(recordStage, {
          taskQueue: stack.taskQueue,
          workflowId: stageWorkflowId("filter", "clean"),
          args: [stack.input("filter", "src", "clean")],
        });
      const summary = await run();
      assert.deepEqual(summary.counts, { kept: 2, rejected: 1, unjudged: 0 });
      assert.deepEqual([summary.failed, summary.skipped, summary.outputRecords], [0, 0, 2]);
      assert.equal(summary.thisRun.calls, 3);
      assert.equal(stack.server.calls.length, 3);
      assert.ok(stack.server.calls.every((call) => {
        const format = call.response_format as { type?: string; json_schema?: { name?: string } };
        return format?.type === "json_schema" && format.json_schema?.name === "record_quality_verdict";
      }));
      assert.deepEqual((await outputOf(stack, "clean")).map((r) => r.uuid), [a!.uuid, b!.uuid]);
      const manifest = await loadManifest(stack.store, summary.datasetRef);
      assert.deepEqual(manifest.derivedFrom, {
        step: "filter-llm",
        parent: await datasetRef(stack.store, "src"),
      });
      assert.deepEqual(await stack.store.getName(stageNames.report("filter", "clean")), summary.reportRef);
      const report = await getJson<StageReport>(stack.store, summary.reportRef);
      assert.deepEqual(report.rejections, [{
        uuid: c!.uuid,
        index: 2,
        status: "rejected",
        attempts: 1,
        reasons: [{
          criterion: "llm_quality",
          path: "turn 0",
          message: "ungrounded_argument: Message 2 invents the password",
          kind: "ungrounded_argument",
          turn: 0,
        }],
      }]);
      const prices = { inputPer1M: TEST_PRICES.input, outputPer1M: TEST_PRICES.output };
      assert.ok(Math.abs(summary.costUsd! - costOf(summary.tokens, prices)) < 1e-12);
      assert.ok(summary.tokens.promptTokens > 0);

      const again = await run();
      assert.equal(stack.server.calls.length, 3, "a re-run of a finished stage makes no model call");
      assert.equal(again.thisRun.calls, 0);
      assert.deepEqual(again.counts, summary.counts);
      assert.deepEqual(again.tokens, summary.tokens);
    });
  },
});

Deno.test({
  ...opts,
  name:
    "recordStage(filter) retries an unreadable verdict with the problem in the conversation; an invalid one stays unjudged",
  fn: async () => {
    const [a, b] = samples;
    await withStack([a!, b!], (call) => {
      if (call.uuid === a!.uuid && call.attempt === 1) return { content: "The record looks fine to me." };
      if (call.uuid === b!.uuid) {
        return { json: { problems: [{ kind: "other", turn: 99, message: "x" }], keep: true } };
      }
      return { json: CLEAN };
    }, async (stack) => {
      const summary = await stack.client.workflow.execute(recordStage, {
        taskQueue: stack.taskQueue,
        workflowId: stageWorkflowId("filter", "clean"),
        args: [stack.input("filter", "src", "clean", { maxAttempts: 2 })],
      });
      assert.deepEqual(summary.counts, { kept: 1, rejected: 0, unjudged: 1 });
      assert.equal(summary.attempts, 4);
      const [first, second] = stack.callsOf(a!.uuid);
      assert.equal(stack.callsOf(a!.uuid).length, 2);
      assert.equal(first!.messages.length, 2);
      assert.equal(second!.messages.length, 4);
      assert.equal(second!.messages[2]!.content, "The record looks fine to me.");
      const feedback = String(second!.messages[3]!.content);
      assert.match(
        feedback,
        /^Your answer cannot be used: 1 problem\.\n- \(root\): The answer holds no JSON object/,
      );
      const kept = await stack.result("filter", a!.uuid);
      assert.equal(kept?.status, "kept");
      assert.equal(kept?.attempts, 2);
      assert.deepEqual(kept?.attemptErrors, [[
        '(root): The answer holds no JSON object (found "The record looks fine to me.")',
      ]]);
      const unjudged = await stack.result("filter", b!.uuid);
      assert.equal(unjudged?.status, "unjudged");
      assert.match(
        unjudged!.reasons[0]!.message,
        /^No valid verdict after 2 attempts: The dialogue has user turns 0 to/,
      );
      assert.match(String(stack.callsOf(b!.uuid)[1]!.messages[3]!.content), /problems\[0\]\.turn: .*turn 99/);
      assert.deepEqual((await outputOf(stack, "clean")).map((r) => r.uuid), [a!.uuid]);
    });
  },
});

Deno.test({
  ...opts,
  name:
    "recordStage(compress) rewrites reasoning only, keeps uncompressible and reasoning-free records unchanged, re-runs free",
  fn: async () => {
    const [r1, r2, plain] = [withReasoning(samples[0]!), withReasoning(samples[1]!), samples[2]!];
    const find = byUuid([r1, r2]);
    await withStack([r1, r2, plain], (call) => {
      const answer = compressAnswerFor(find(call.uuid));
      if (call.uuid === r2.uuid) {
        // Never short enough: the record stays as it was.
        for (const m of answer.messages) m.thinking = longReasoning(m.index, []);
      }
      return { json: answer };
    }, async (stack) => {
      const run = () =>
        stack.client.workflow.execute(recordStage, {
          taskQueue: stack.taskQueue,
          workflowId: stageWorkflowId("compress", "short"),
          args: [stack.input("compress", "src", "short", { maxAttempts: 2 })],
        });
      const summary = await run();
      assert.deepEqual(summary.counts, { compressed: 1, "no-reasoning": 1, "not-compressed": 1 });
      assert.equal(summary.outputRecords, 3, "nothing is lost");
      assert.equal(
        stack.server.calls.length,
        3,
        "one call for r1, two for r2, none for the record without reasoning",
      );
      assert.equal(stack.callsOf(plain.uuid).length, 0);
      const [o1, o2, o3] = await outputOf(stack, "short");
      assert.deepEqual(o2, r2, "an uncompressible record is kept unchanged");
      assert.deepEqual(o3, plain);
      o1!.messages.forEach((m, i) => {
        const was = r1.messages[i]!;
        assert.deepEqual(m.tool_calls, was.tool_calls);
        assert.equal(visibleText(m.content), visibleText(was.content));
        if (m.role === "assistant") {
          assert.ok(
            splitReasoning(m.content)!.thinking.length < splitReasoning(was.content)!.thinking.length,
          );
        }
      });
      assert.deepEqual(summary.measure, {
        before: recordReasoningTokens(r1) + recordReasoningTokens(r2),
        after: recordReasoningTokens(o1!) + recordReasoningTokens(r2),
      });
      const manifest = await loadManifest(stack.store, summary.datasetRef);
      assert.equal(manifest.derivedFrom?.step, "compress-cot");
      const report = await getJson<StageReport>(stack.store, summary.reportRef);
      assert.deepEqual(report.rejections.map((r) => [r.uuid, r.status, r.attempts]), [[
        r2.uuid,
        "not-compressed",
        2,
      ]]);
      assert.match(
        report.rejections[0]!.reasons[0]!.message,
        /^Not compressed after 2 attempts: .*over its limit/,
      );
      assert.ok(
        stack.server.calls.every((c) =>
          (c.response_format as { json_schema?: { name?: string } })?.json_schema?.name ===
            "compressed_reasoning"
        ),
      );

      const again = await run();
      assert.equal(stack.server.calls.length, 3, "a re-run of a finished stage makes no model call");
      assert.equal(again.thisRun.calls, 0);
      assert.deepEqual(again.counts, summary.counts);
      assert.deepEqual(again.measure, summary.measure);
    });
  },
});

Deno.test({
  ...opts,
  name: "recordStage(compress) retries a rewrite with a missing index, showing the problem, then accepts it",
  fn: async () => {
    const r1 = withReasoning(samples[3]!);
    const full = compressAnswerFor(r1);
    const dropped = full.messages[0]!.index;
    await withStack([r1], (call) => ({
      json: call.attempt === 1 ? { messages: full.messages.slice(1) } : full,
    }), async (stack) => {
      const summary = await stack.client.workflow.execute(recordStage, {
        taskQueue: stack.taskQueue,
        workflowId: stageWorkflowId("compress", "short"),
        args: [stack.input("compress", "src", "short")],
      });
      assert.deepEqual(summary.counts, { compressed: 1, "no-reasoning": 0, "not-compressed": 0 });
      const [first, second] = stack.callsOf(r1.uuid);
      assert.equal(stack.server.calls.length, 2);
      assert.equal(first!.messages.length, 2);
      assert.deepEqual(JSON.parse(String(second!.messages[2]!.content)), {
        messages: full.messages.slice(1),
      });
      const feedback = String(second!.messages[3]!.content);
      assert.ok(
        feedback.includes(
          `- answer.messages: Missing index ${dropped}: the reasoning of assistant message ${dropped} was not rewritten`,
        ),
        feedback,
      );
      const result = await stack.result("compress", r1.uuid);
      assert.equal(result?.attempts, 2);
      assert.equal(result?.status, "compressed");
    });
  },
});

Deno.test({
  ...opts,
  name:
    "recordStage pauses when its token budget is spent, resumes when an update raises it, stops on a signal",
  fn: async () => {
    const records = samples.slice(0, 4);
    await withStack(records, () => ({ json: CLEAN }), async (stack) => {
      const handle = await stack.client.workflow.start(recordStage, {
        taskQueue: stack.taskQueue,
        workflowId: stageWorkflowId("filter", "clean"),
        args: [stack.input("filter", "src", "clean", { concurrency: 1, budget: { tokens: 1 } })],
      });
      const paused = await untilProgress(handle, (p) => p.phase === "paused");
      assert.equal(paused.counters.calls, 1);
      assert.match(paused.pausedReason ?? "", /tokens of a 1-token budget/);
      await delay(500);
      assert.equal(stack.server.calls.length, 1, "no call while paused");

      const spent = paused.counters.promptTokens + paused.counters.completionTokens;
      assert.deepEqual(await handle.executeUpdate(setStageBudgetUpdate, { args: [{ tokens: spent + 1 }] }), {
        tokens: spent + 1,
      });
      await untilProgress(handle, (p) => p.phase === "paused" && p.counters.calls === 2);
      await handle.signal(stopStageSignal);
      const summary = await handle.result();
      assert.deepEqual(summary.counts, { kept: 2, rejected: 0, unjudged: 0 });
      assert.deepEqual([summary.skipped, summary.outputRecords, summary.thisRun.calls], [2, 2, 2]);
      assert.equal(stack.server.calls.length, 2);
      assert.deepEqual(
        (await outputOf(stack, "clean")).map((r) => r.uuid),
        records.slice(0, 2).map((r) => r.uuid),
      );
    });
  },
});

Deno.test({
  ...opts,
  name: "recordStage continues as new between chunks and keeps its counters",
  fn: async () => {
    const records = [withReasoning(samples[4]!), samples[5]!, withReasoning(samples[6]!)];
    const find = byUuid(records);
    await withStack(records, (call) => ({ json: compressAnswerFor(find(call.uuid)) }), async (stack) => {
      const handle = await stack.client.workflow.start(recordStage, {
        taskQueue: stack.taskQueue,
        workflowId: stageWorkflowId("compress", "short"),
        args: [stack.input("compress", "src", "short", { recordsPerRun: 1 })],
      });
      const summary = await handle.result();
      assert.notEqual(
        (await handle.describe()).runId,
        handle.firstExecutionRunId,
        "the run continued as new",
      );
      assert.deepEqual(summary.counts, { compressed: 2, "no-reasoning": 1, "not-compressed": 0 });
      assert.equal(summary.thisRun.calls, 2, "the counters survive continue-as-new");
      assert.equal(stack.server.calls.length, 2);
    });
  },
});

/** Runs `cm2 <args>` (client.ts) against the test's Temporal. */
async function cm2(
  address: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", ...WORKER_PERMISSIONS, "--allow-run", path.join(ROOT, "client.ts"), ...args],
    env: { TEMPORAL_ADDRESS: address },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: text(stdout), stderr: text(stderr) };
}

Deno.test({
  ...opts,
  name:
    "cm2 data filter --llm writes --rejected lines; cm2 data compress-cot exits 3 when paused and resumes",
  fn: async () => {
    const records = [withReasoning(samples[0]!), withReasoning(samples[1]!)];
    const find = byUuid(records);
    const problem = { kind: "ignores_user", turn: 0, message: "Message 2 does not answer" };
    const script: StageScript = (call) =>
      call.kind === "compress"
        ? { json: compressAnswerFor(find(call.uuid)) }
        : { json: call.uuid === records[1]!.uuid ? { problems: [problem], keep: false } : CLEAN };
    await withStack(records, script, async (stack, address) => {
      const labeler = {
        baseURL: stack.server.url,
        model: "labeler-model",
        timeoutMs: 5_000,
        prices: TEST_PRICES,
      };
      const configFile = path.join(stack.storeRoot, "config.json");
      const config = { models: { labeler }, store: { url: stack.storeRoot }, stages: { concurrency: 1 } };
      await fs.writeFile(configFile, JSON.stringify(config));
      const common = ["--config", configFile, "--task-queue", stack.taskQueue];
      const rejectedFile = path.join(stack.storeRoot, "rejected.jsonl");
      const filtered = await cm2(address, [
        "data",
        "filter",
        "src",
        "--llm",
        "--out",
        "clean",
        "--rejected",
        rejectedFile,
        ...common,
      ]);
      assert.equal(filtered.code, 0, filtered.stderr);
      assert.match(filtered.stdout, /LLM filter of src: kept 1 of 2 records → dataset clean with 1 record/);
      assert.match(filtered.stdout, /ignores_user: Message 2 does not answer/);
      const lines = (await fs.readFile(rejectedFile, "utf8")).trim().split("\n").map((l) => JSON.parse(l));
      assert.deepEqual(lines, [{
        uuid: records[1]!.uuid,
        reasons: [{
          criterion: "llm_quality",
          path: "turn 0",
          message: "ignores_user: Message 2 does not answer",
          kind: "ignores_user",
          turn: 0,
        }],
      }]);
      const misuse = await cm2(address, ["data", "filter", "src", "--budget-usd", "1"]);
      assert.equal(misuse.code, 1);
      assert.match(misuse.stderr, /--budget-usd only apply with --llm/);

      const compress = ["data", "compress-cot", "src", "--out", "short", "--target", "0.5", ...common];
      const paused = await cm2(address, [...compress, "--budget-tokens", "1"]);
      assert.equal(paused.code, 3, paused.stderr);
      assert.match(paused.stderr, /paused: spent \d+ tokens of a 1-token budget/);
      const resumed = await cm2(address, [...compress, "--budget-tokens", "100000000", "--json"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stderr, /budget of compress\/short is now 100000000 tokens/);
      const summary = JSON.parse(resumed.stdout.trim().split("\n").at(-1)!);
      assert.deepEqual(summary.counts, { compressed: 2, "no-reasoning": 0, "not-compressed": 0 });
      assert.ok(summary.measure.after * 2 <= summary.measure.before);
      assert.equal(stack.callsOf(records[0]!.uuid).length, 2, "one filter call and one compress call");
    });
  },
});
