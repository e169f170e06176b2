import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { ROOT } from "../../config.ts";
import type { LabelSummary } from "../../activities/labeling.ts";
import { useTemporal } from "../harness/temporal.ts";
import {
  assertSummaryMatchesStore,
  labelingStack,
  TEST_PRICES,
  toolTalkRecords,
} from "../harness/labeling.ts";
import { spawnWorker, WORKER_PERMISSIONS } from "../../scripts/worker_process.ts";

/** A call counts as in flight at the kill if it was still open this long before it (slack for a loaded machine). */
const IN_FLIGHT_WINDOW_MS = 1_000;

/** Runs `cm2 label …` (client.ts) and returns its exit code and stdout. */
async function cli(
  address: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...WORKER_PERMISSIONS, "--allow-run", path.join(ROOT, "client.ts"), "label", ...args],
    env: { TEMPORAL_ADDRESS: address },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function lastJsonLine(text: string): LabelSummary {
  const line = text.trim().split("\n").filter((l) => l.startsWith("{")).at(-1);
  assert.ok(line, `a JSON summary line in ${JSON.stringify(text.slice(-500))}`);
  return JSON.parse(line);
}

Deno.test({
  name:
    "cm2 label over 20 ToolTalk records survives kill -9 of its worker without re-paying finished records",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const records = await toolTalkRecords(20);
    const uuids = records.map((r) => r.uuid);
    const rejected = uuids[3]!;
    const retried = uuids[7]!;
    const repaired = new Set([uuids[1]!, uuids[12]!]);
    /** Labeler calls each record needs: 1, or 2 (invalid then valid), or 3 (always invalid). */
    const expected = new Map(uuids.map((u) => [u, u === rejected ? 3 : u === retried ? 2 : 1]));
    const temporal = await useTemporal();
    const stack = await labelingStack(temporal.address, records, {
      latencyMs: 600,
      script: (id, blocks) => {
        const halve = () => {
          for (const k of Object.keys(blocks[0]!.weight)) blocks[0]!.weight[k] = blocks[0]!.weight[k]! / 2;
          return { json: blocks };
        };
        if (id.uuid === rejected || (id.uuid === retried && id.attempt === 1)) return halve();
        if (repaired.has(id.uuid)) {
          for (const k of Object.keys(blocks[0]!.weight)) blocks[0]!.weight[k] = blocks[0]!.weight[k]! * 0.99;
          return { json: blocks };
        }
        return undefined;
      },
    });
    const configFile = path.join(stack.storeRoot, "label-config.json");
    await fs.writeFile(
      configFile,
      JSON.stringify({
        models: {
          labeler: {
            baseURL: stack.server.url,
            model: "labeler-model",
            timeoutMs: 5_000,
            prices: TEST_PRICES,
          },
        },
        store: { url: stack.storeRoot },
      }),
    );
    await stack.saveRecords("tooltalk20", records);
    const args = [
      "tooltalk20",
      "--config",
      configFile,
      "--task-queue",
      stack.taskQueue,
      "--concurrency",
      "3",
      "--json",
    ];
    const workers: Deno.ChildProcess[] = [];
    try {
      let worker = spawnWorker(temporal.address, stack.taskQueue, stack.storeRoot);
      workers.push(worker);
      const run = cli(temporal.address, args);

      // Kill the worker once a few records are done, with calls in flight.
      const ok = () => stack.server.calls.filter((c) => c.status === 200).length;
      for (let i = 0; ok() < 6; i++) {
        assert.ok(i < 1_200, "the labeling made progress before the kill");
        await new Promise((r) => setTimeout(r, 50));
      }
      // Let the finished calls age past the in-flight window, so they count as finished before the kill.
      await new Promise((r) => setTimeout(r, IN_FLIGHT_WINDOW_MS + 300));
      worker.kill("SIGKILL");
      const killedAt = Date.now();
      await worker.status;
      const before = stack.server.calls.slice();
      const inFlight = before.filter((c) =>
        c.endedAt === undefined || c.endedAt >= killedAt - IN_FLIGHT_WINDOW_MS
      ).length;
      const doneBefore = uuids.filter((u) => {
        const calls = before.filter((c) => c.headers["idempotency-key"]?.includes(`/${u}/`));
        return calls.length === expected.get(u) &&
          calls.every((c) => c.status === 200 && c.endedAt! < killedAt - IN_FLIGHT_WINDOW_MS);
      });
      assert.ok(doneBefore.length >= 4, `records finished before the kill: ${doneBefore.length}`);
      worker = spawnWorker(temporal.address, stack.taskQueue, stack.storeRoot);
      workers.push(worker);

      const first = await run;
      assert.equal(first.code, 0, first.stderr);
      const summary = lastJsonLine(first.stdout);
      const calls = stack.callsPerUuid();
      for (const u of doneBefore) assert.equal(calls.get(u), expected.get(u), `${u} was not called again`);
      for (const u of uuids) assert.ok((calls.get(u) ?? 0) >= expected.get(u)!, `${u} was labeled`);
      const repeated = [...calls].reduce((n, [u, c]) => n + c - expected.get(u)!, 0);
      assert.ok(repeated <= inFlight, `repeated ${repeated} calls, ${inFlight} were in flight at the kill`);
      console.log(JSON.stringify({
        finished_before_kill: doneBefore.length,
        in_flight_at_kill: inFlight,
        repeated_calls: repeated,
        labeler_calls: stack.server.calls.length,
      }));

      assert.equal(summary.labeled, 19);
      assert.equal(summary.rejected, 1);
      assert.equal(summary.repaired, 2);
      assert.deepEqual(summary.repairs, { "weight-renormalised": 2 });
      assert.equal(
        (summary as LabelSummary & { rejections: { uuid: string }[] }).rejections[0]?.uuid,
        rejected,
      );
      await assertSummaryMatchesStore(stack.store, summary, { dataset: "tooltalk20", uuids });

      // A re-run after the fact reuses every stored result.
      const callsBefore = stack.server.calls.length;
      const again = await cli(temporal.address, args);
      assert.equal(again.code, 0, again.stderr);
      const summary2 = lastJsonLine(again.stdout);
      assert.equal(stack.server.calls.length, callsBefore, "no labeler call on a re-run");
      assert.equal(summary2.thisRun.calls, 0);
      assert.equal(summary2.labeled, 19);
      await assertSummaryMatchesStore(stack.store, summary2, { dataset: "tooltalk20", uuids });

      // The human-readable summary says the same.
      const text = await cli(temporal.address, args.filter((a) => a !== "--json"));
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /labeled 19 of 20 record-variants/);
      assert.match(text.stdout, /repaired 2: weight-renormalised 2/);
      assert.match(
        text.stdout,
        new RegExp(
          `rejected 1:\\n    ${rejected} v0 after 3 attempts:\\n      \\[0\\]\\.weight: Weights of turn 0 sum to`,
        ),
      );
      if (Deno.env.get("CM2_SHOW")) console.log(text.stdout);
      assert.match(text.stdout, /cost ≈ \$\d+\.\d{4} \(this run \$0\.0000\)/);
    } finally {
      for (const w of workers) {
        try {
          w.kill("SIGKILL");
        } catch { /* already exited */ }
        await w.status;
      }
      await stack.close();
      await temporal.release();
    }
  },
});

Deno.test({
  name: "cm2 label exits 3 when paused on its budget; the same command with a higher budget resumes it",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const records = await toolTalkRecords(3);
    const temporal = await useTemporal();
    const stack = await labelingStack(temporal.address, records);
    const stop = await stack.startWorker();
    try {
      const configFile = path.join(stack.storeRoot, "label-config.json");
      await fs.writeFile(
        configFile,
        JSON.stringify({
          models: { labeler: { baseURL: stack.server.url, model: "labeler-model", timeoutMs: 5_000 } },
          store: { url: stack.storeRoot },
          labeling: { concurrency: 1 },
        }),
      );
      await stack.saveRecords("tt3", records);
      const args = ["tt3", "--config", configFile, "--task-queue", stack.taskQueue, "--out", "tt3-l"];
      const noPrices = await cli(temporal.address, [...args, "--budget-usd", "1"]);
      assert.equal(noPrices.code, 1);
      assert.match(noPrices.stderr, /A USD budget needs prices/);

      const paused = await cli(temporal.address, [...args, "--budget-tokens", "1"]);
      assert.equal(paused.code, 3, paused.stderr);
      assert.match(paused.stderr, /paused: spent \d+ tokens of a 1-token budget/);
      assert.equal(stack.server.calls.length, 1);

      const resumed = await cli(temporal.address, [...args, "--budget-tokens", "100000000", "--json"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stderr, /budget of label\/tt3-l is now 100000000 tokens/);
      const summary = lastJsonLine(resumed.stdout);
      assert.equal(summary.labeled, 3);
      assert.equal(summary.costUsd, null, "no prices, no cost estimate");
      assert.equal(stack.server.calls.length, 3);
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});
