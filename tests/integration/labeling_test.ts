import assert from "node:assert/strict";
import { deriveRuleChecklist } from "../../core/importers/mod.ts";
import type { TrajectoryRecord, TurnBlock } from "../../core/records.ts";
import { datasetRef, loadAllRecords, loadManifest } from "../../store/datasets.ts";
import {
  labelDataset,
  type LabelProgress,
  labelProgressQuery,
  labelWorkflowId,
  setLabelBudgetUpdate,
  stopLabelingSignal,
} from "../../workflows/labeling.ts";
import type { ScriptedReply } from "../scripted_server.ts";
import { useTemporal } from "../harness/temporal.ts";
import {
  assertSummaryMatchesStore,
  type LabelingStack,
  labelingStack,
  toolTalkRecords,
} from "../harness/labeling.ts";
import type { LabelScript } from "../harness/scripted_labeler.ts";

const records = await toolTalkRecords(6);
const uuids = (rs: readonly TrajectoryRecord[]) => rs.map((r) => r.uuid);

/** Runs `fn` with a stack and a worker on a dev server; tears everything down after. */
async function withStack(
  recs: readonly TrajectoryRecord[],
  opts: { script?: LabelScript; latencyMs?: number },
  fn: (stack: LabelingStack) => Promise<void>,
): Promise<void> {
  const temporal = await useTemporal();
  const stack = await labelingStack(temporal.address, recs, opts);
  const stop = await stack.startWorker();
  try {
    await stack.saveRecords("src", recs);
    await fn(stack);
  } finally {
    await stop();
    await stack.close();
    await temporal.release();
  }
}

function halveWeights(blocks: TurnBlock[], turn = 0): TurnBlock[] {
  const b = blocks[turn]!;
  for (const k of Object.keys(b.weight)) b.weight[k] = b.weight[k]! / 2;
  return blocks;
}

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  ...opts,
  name: "labelDataset() labels every record once, writes a derived dataset, and a re-run pays nothing",
  fn: () =>
    withStack(records.slice(0, 3), {}, async (stack) => {
      const recs = records.slice(0, 3);
      const summary = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out")],
      });
      assert.equal(summary.labeled, 3);
      assert.equal(summary.rejected, 0);
      assert.equal(summary.repaired, 0);
      assert.equal(summary.thisRun.calls, 3);
      assert.equal(stack.server.calls.length, 3);
      const out = await loadAllRecords(
        stack.store,
        await loadManifest(stack.store, (await datasetRef(stack.store, "out"))!),
      );
      assert.deepEqual(out.map((r) => r.checklists), recs.map((r) => [deriveRuleChecklist(r)]));
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "src", uuids: uuids(recs) });
      assert.ok(
        stack.server.calls.every((c) => (c.response_format as { type?: string })?.type === "json_schema"),
      );

      const again = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out")],
      });
      assert.equal(stack.server.calls.length, 3, "no labeler call on a re-run");
      assert.equal(again.thisRun.calls, 0);
      assert.equal(again.labeled, 3);
      assert.deepEqual(again.tokens, summary.tokens);
      await assertSummaryMatchesStore(stack.store, again, { dataset: "src", uuids: uuids(recs) });
    }),
});

Deno.test({
  ...opts,
  name: "labelDataset() retries an invalid answer with its errors in the conversation, then accepts the fix",
  fn: async () => {
    const recs = records.slice(0, 2);
    const target = recs[1]!.uuid;
    await withStack(recs, {
      script: (
        id,
        blocks,
      ) => (id.uuid === target && id.attempt === 1 ? { json: halveWeights(blocks) } : undefined),
    }, async (stack) => {
      const summary = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out")],
      });
      assert.equal(summary.labeled, 2);
      assert.equal(summary.attempts, 3);
      const calls = stack.server.calls.filter((c) => c.headers["idempotency-key"]?.includes(`/${target}/`));
      assert.equal(calls.length, 2);
      const [first, second] = calls;
      assert.equal(first!.messages.length, 2);
      assert.equal(second!.messages.length, 4);
      const firstAnswer = JSON.parse(second!.messages[2]!.content as string);
      assert.deepEqual(firstAnswer, halveWeights(deriveRuleChecklistBlocks(recs[1]!)));
      const feedback = String(second!.messages[3]!.content);
      assert.ok(
        feedback.includes("[0].weight: Weights of turn 0 sum to 0.5, expected 1 (found 0.5)"),
        feedback,
      );
      const result = await stack.result(target);
      assert.equal(result?.status, "labeled");
      assert.deepEqual(result?.attemptErrors, [[
        "[0].weight: Weights of turn 0 sum to 0.5, expected 1 (found 0.5)",
      ]]);
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "src", uuids: uuids(recs) });
    });
  },
});

function deriveRuleChecklistBlocks(r: TrajectoryRecord): TurnBlock[] {
  return deriveRuleChecklist(r).map((items, turn) => ({
    turn,
    checklist: items.map(({ dependence: _d, weight: _w, extra_info: _e, ...core }) => core),
    dependence: Object.fromEntries(items.map((i) => [i.id, i.dependence])),
    weight: Object.fromEntries(items.map((i) => [i.id, i.weight])),
  }));
}

Deno.test({
  ...opts,
  name:
    "labelDataset() rejects a record whose answers stay invalid, keeping its reasons, and labels the rest",
  fn: async () => {
    const recs = records.slice(0, 3);
    const bad = recs[0]!.uuid;
    await withStack(recs, {
      script: (id, blocks) => (id.uuid === bad ? { json: halveWeights(blocks) } : undefined),
    }, async (stack) => {
      const summary = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out", { maxAttempts: 3 })],
      });
      assert.equal(summary.labeled, 2);
      assert.equal(summary.rejected, 1);
      assert.equal(summary.labeledRecords, 2);
      assert.equal(stack.callsPerUuid().get(bad), 3);
      const result = await stack.result(bad);
      assert.equal(result?.status, "rejected");
      assert.equal(result?.attempts, 3);
      assert.deepEqual(result?.reasons, ["[0].weight: Weights of turn 0 sum to 0.5, expected 1 (found 0.5)"]);
      const out = await loadAllRecords(stack.store, await loadManifest(stack.store, summary.datasetRef));
      assert.ok(!out.some((r) => r.uuid === bad), "a rejected record is not in the output");
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "src", uuids: uuids(recs) });
    });
  },
});

Deno.test({
  ...opts,
  name: "labelDataset() waits out a 429 for its Retry-After (Temporal retries the call) and then labels",
  fn: async () => {
    const recs = records.slice(0, 1);
    let served = 0;
    await withStack(recs, {
      script: ():
        | ScriptedReply
        | undefined => (served++ === 0 ? { fault: "429", retryAfterS: 3 } : undefined),
    }, async (stack) => {
      const summary = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out")],
      });
      assert.equal(summary.labeled, 1);
      const [first, second] = stack.server.calls;
      assert.equal(stack.server.calls.length, 2);
      assert.equal(first!.status, 429);
      assert.equal(second!.status, 200);
      assert.equal(
        first!.headers["idempotency-key"],
        second!.headers["idempotency-key"],
        "the same logical call",
      );
      const gap = second!.startedAt - first!.endedAt!;
      assert.ok(
        gap >= 2_900,
        `retried after ${gap} ms, Retry-After said 3 s (the preset's first backoff is 1 s)`,
      );
      assert.equal(summary.attempts, 1, "a rate-limited call is not a labeling attempt");
    });
  },
});

Deno.test({
  ...opts,
  name: "labelDataset() applies safe repairs and counts them per kind in the summary and the store",
  fn: async () => {
    const recs = records.slice(0, 3);
    const [a, b] = [recs[0]!.uuid, recs[1]!.uuid];
    await withStack(recs, {
      script: (id, blocks) => {
        if (id.uuid === a) {
          // Weights 2 % high in every turn: renormalised.
          for (const bl of blocks) {
            for (const k of Object.keys(bl.weight)) bl.weight[k] = bl.weight[k]! * 1.02;
          }
          return { json: blocks };
        }
        if (id.uuid === b) {
          // Lower-case ids everywhere, a dependency on a reply item, blocks out of order.
          const lower = (s: string) => s.toLowerCase();
          for (const bl of blocks) {
            for (const it of bl.checklist) it.id = lower(it.id);
            bl.dependence = Object.fromEntries(
              Object.entries(bl.dependence).map(([k, v]) => [lower(k), v.map(lower)]),
            );
            bl.weight = Object.fromEntries(Object.entries(bl.weight).map(([k, v]) => [lower(k), v]));
          }
          const last = blocks.at(-1)!;
          const reply = last.checklist.find((i) => i.focus_on === "assistant.content.user_visible_reply");
          const other = last.checklist.find((i) => i !== reply);
          if (reply && other) last.dependence[other.id] = [...last.dependence[other.id]!, reply.id];
          return { json: [...blocks].reverse() };
        }
        return undefined;
      },
    }, async (stack) => {
      const summary = await stack.client.workflow.execute(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out")],
      });
      assert.equal(summary.labeled, 3);
      assert.equal(summary.repaired, 2);
      assert.equal(stack.server.calls.length, 3, "repairs need no retry");
      const itemsB = deriveRuleChecklist(recs[1]!).flat().length;
      const turnsA = deriveRuleChecklist(recs[0]!).length;
      assert.deepEqual(summary.repairs, {
        "weight-renormalised": turnsA,
        "id-format": itemsB,
        "dependency-dropped": 1,
        ...(recs[1]!.messages.filter((m) => m.role === "user").length > 1 ? { "sort-turns": 1 } : {}),
      });
      const out = await loadAllRecords(stack.store, await loadManifest(stack.store, summary.datasetRef));
      assert.deepEqual(out.find((r) => r.uuid === b)?.checklists, [deriveRuleChecklist(recs[1]!)]);
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "src", uuids: uuids(recs) });
    });
  },
});

Deno.test({
  ...opts,
  name:
    "labelDataset() pauses when its budget is spent, resumes when an update raises it, and stops on a signal",
  fn: async () => {
    const recs = records.slice(0, 4);
    await withStack(recs, {}, async (stack) => {
      const handle = await stack.client.workflow.start(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out", { concurrency: 1, budget: { tokens: 1 } })],
      });
      const waitFor = async (pred: (p: LabelProgress) => boolean) => {
        for (let i = 0; i < 200; i++) {
          const p = await handle.query(labelProgressQuery);
          if (pred(p)) return p;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error("timed out waiting for progress");
      };
      const paused = await waitFor((p) => p.phase === "paused");
      assert.equal(paused.counters.calls, 1);
      assert.match(paused.pausedReason ?? "", /tokens of a 1-token budget/);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(stack.server.calls.length, 1, "no call while paused");

      const spent = paused.counters.promptTokens + paused.counters.completionTokens;
      const budget = await handle.executeUpdate(setLabelBudgetUpdate, { args: [{ tokens: spent + 1 }] });
      assert.deepEqual(budget, { tokens: spent + 1 });
      await waitFor((p) => p.phase === "paused" && p.counters.calls === 2);
      await assert.rejects(
        () => handle.executeUpdate(setLabelBudgetUpdate, { args: [{ usd: -1 }] }),
        (err: Error) =>
          /Budget usd must be a non-negative number, got -1/.test(String((err.cause as Error)?.message)),
      );
      await handle.signal(stopLabelingSignal);
      const summary = await handle.result();
      assert.equal(summary.labeled, 2);
      assert.equal(summary.skipped, 2);
      assert.equal(stack.server.calls.length, 2);
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "src", uuids: uuids(recs) });
    });
  },
});

Deno.test({
  ...opts,
  name: "labelDataset() continues as new between chunks, labels every variant and keeps its counters",
  fn: async () => {
    const recs = records.slice(0, 3);
    await withStack(recs, {}, async (stack) => {
      const handle = await stack.client.workflow.start(labelDataset, {
        taskQueue: stack.taskQueue,
        workflowId: labelWorkflowId("out"),
        args: [stack.input("src", "out", { variants: 2, jobsPerRun: 2, limit: 2 })],
      });
      const summary = await handle.result();
      assert.equal(summary.records, 2, "--limit");
      assert.equal(summary.labeled, 4);
      assert.equal(summary.labeledRecords, 2);
      assert.equal(summary.thisRun.calls, 4);
      assert.equal(stack.server.calls.length, 4);
      const keys = stack.server.calls.map((c) => c.headers["idempotency-key"]!.replace(/^label\/[^/]+\//, ""))
        .sort();
      assert.deepEqual(
        keys,
        recs.slice(0, 2).flatMap((r) => [`${r.uuid}/v0/attempt-1`, `${r.uuid}/v1/attempt-1`]).sort(),
      );
      const desc = await handle.describe();
      assert.notEqual(desc.runId, handle.firstExecutionRunId, "the run continued as new");
      const out = await loadAllRecords(stack.store, await loadManifest(stack.store, summary.datasetRef));
      assert.deepEqual(out.map((r) => r.checklists.length), [2, 2]);
      await assertSummaryMatchesStore(stack.store, summary, {
        dataset: "src",
        uuids: uuids(recs.slice(0, 2)),
        variants: 2,
      });
    });
  },
});
