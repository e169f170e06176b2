/**
 * A labeling stack for tests: the scripted server TEST DOUBLE playing the labeler, a temporary
 * store holding the dataset, and an in-process orchestrator worker on a unique task queue of a real
 * dev server. Also loads ToolTalk records from the shared benchmark data.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import { createActivities } from "../../activities/mod.ts";
import {
  labelNames,
  type LabelReport,
  type LabelResultBlob,
  type LabelSummary,
} from "../../activities/labeling.ts";
import { modelFactory, ROOT } from "../../config.ts";
import { parseRunConfig, type RunConfig } from "../../core/config.ts";
import { importFiles } from "../../core/importers/mod.ts";
import { LABEL_PROMPT_VERSION } from "../../core/labeling.ts";
import { type TrajectoryRecord, validateRecord } from "../../core/records.ts";
import { costOf } from "../../llm/usage.ts";
import { datasetRef, loadAllRecords, loadManifest, saveDataset } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson } from "../../store/mod.ts";
import type { LabelRunInput } from "../../workflows/labeling.ts";
import { type ScriptedServer, startScriptedServer } from "../scripted_server.ts";
import { type LabelScript, ruleLabeler } from "./scripted_labeler.ts";
import { uniqueQueue, workflowBundle } from "./temporal.ts";

/** The ToolTalk benchmark conversations shared with the project. */
export const TOOLTALK_DIR = fileURLToPath(
  new URL("../../../shared/benchdata/tooltalk/data/tooltalk", import.meta.url),
);

/** The first `n` ToolTalk records that import cleanly, in file-name order. */
export async function toolTalkRecords(n: number): Promise<TrajectoryRecord[]> {
  const files = (await fs.readdir(TOOLTALK_DIR)).filter((f) => f.endsWith(".json")).sort();
  const report = await importFiles(
    files.map((f) => path.join(TOOLTALK_DIR, f)),
    (p) => fs.readFile(p, "utf8"),
  );
  const out = report.records;
  if (out.length < n) throw new Error(`Only ${out.length} ToolTalk records import from ${TOOLTALK_DIR}`);
  return out.slice(0, n);
}

/** Labeler prices of the test configs (USD per 1M tokens). */
export const TEST_PRICES = { input: 1.25, output: 10 };

/** A run config whose labeler is the scripted server. */
export function labelingConfig(
  url: string,
  storeRoot: string,
  extra: Record<string, unknown> = {},
): RunConfig {
  const parsed = parseRunConfig({
    models: { labeler: { baseURL: url, model: "labeler-model", timeoutMs: 5_000, prices: TEST_PRICES } },
    store: { url: storeRoot },
    ...extra,
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
  return parsed.config;
}

/** A running labeling stack. */
export interface LabelingStack {
  server: ScriptedServer;
  store: FsStore;
  storeRoot: string;
  client: Client;
  taskQueue: string;
  config: RunConfig;
  /** Stores `records` as dataset `name`. */
  saveRecords(name: string, records: readonly TrajectoryRecord[]): Promise<void>;
  /** Workflow input with test defaults. */
  input(dataset: string, out: string, over?: Partial<LabelRunInput>): LabelRunInput;
  /** The stored result of a record-variant. */
  result(uuid: string, variant?: number): Promise<LabelResultBlob | undefined>;
  /** Labeler calls per record uuid so far. */
  callsPerUuid(): Map<string, number>;
  startWorker(): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** Builds the stack against a Temporal address. */
export async function labelingStack(
  address: string,
  records: readonly TrajectoryRecord[],
  opts: { script?: LabelScript; latencyMs?: number } = {},
): Promise<LabelingStack> {
  const server = startScriptedServer({
    roles: { "labeler-model": ruleLabeler(records, opts.script) },
    ...(opts.latencyMs ? { latencyMs: opts.latencyMs } : {}),
  });
  const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-label-"));
  const store = new FsStore(storeRoot);
  const taskQueue = uniqueQueue("label");
  const connection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const config = labelingConfig(server.url, storeRoot);
  return {
    server,
    store,
    storeRoot,
    client,
    taskQueue,
    config,
    async saveRecords(name, recs) {
      await saveDataset(store, name, recs, {
        sources: [{ file: "test", format: "test", imported: recs.length, errors: 0 }],
        derivedFrom: { step: "import", parent: null },
      });
    },
    input(dataset, out, over = {}) {
      return {
        config,
        dataset,
        out,
        promptVersion: LABEL_PROMPT_VERSION,
        variants: 1,
        concurrency: 4,
        maxAttempts: 3,
        weightRepairTolerance: 0.05,
        budget: {},
        ...over,
      };
    },
    async result(uuid, variant = 0) {
      const ref = await store.getName(labelNames.result(LABEL_PROMPT_VERSION, uuid, variant));
      return ref ? await getJson<LabelResultBlob>(store, ref) : undefined;
    },
    callsPerUuid() {
      const out = new Map<string, number>();
      for (const c of server.calls) {
        const m = /^label\/[^/]+\/(.+)\/v\d+\/attempt-\d+$/.exec(c.headers["idempotency-key"] ?? "");
        if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + 1);
      }
      return out;
    },
    async startWorker() {
      const nc = await NativeConnection.connect({ address });
      const worker = await Worker.create({
        connection: nc,
        taskQueue,
        workflowBundle: await workflowBundle(),
        activities: createActivities({ store, models: modelFactory, root: ROOT }),
        maxConcurrentActivityTaskExecutions: 16,
      });
      const running = worker.run();
      return async () => {
        worker.shutdown();
        await running;
        await nc.close();
      };
    },
    async close() {
      await connection.close();
      await server.close();
      await fs.rm(storeRoot, { recursive: true, force: true });
    },
  };
}

/**
 * Recomputes a labeling summary from the store alone (output dataset, result pointers, report) and
 * asserts that `summary` says the same.
 */
export async function assertSummaryMatchesStore(
  store: FsStore,
  summary: LabelSummary,
  opts: { dataset: string; uuids: readonly string[]; variants?: number },
): Promise<void> {
  const variants = opts.variants ?? 1;
  const outRef = await datasetRef(store, summary.out);
  assert.ok(outRef, `dataset ${summary.out} exists`);
  assert.deepEqual(outRef, summary.datasetRef, "the summary names the stored dataset");
  const manifest = await loadManifest(store, outRef);
  assert.equal(manifest.derivedFrom?.step, `label:${LABEL_PROMPT_VERSION}`);
  assert.deepEqual(manifest.derivedFrom?.parent, await datasetRef(store, opts.dataset));
  const records = await loadAllRecords(store, manifest);
  for (const r of records) assert.equal(validateRecord(r).ok, true, `${r.uuid} validates`);
  let labeled = 0;
  let rejected = 0;
  let repaired = 0;
  let attempts = 0;
  const repairs: Record<string, number> = {};
  const tokens = { promptTokens: 0, completionTokens: 0 };
  const rejectedIds: string[] = [];
  for (const uuid of opts.uuids) {
    for (let v = 0; v < variants; v++) {
      const ref = await store.getName(labelNames.result(LABEL_PROMPT_VERSION, uuid, v));
      if (!ref) continue;
      const res = await getJson<LabelResultBlob>(store, ref);
      attempts += res.attempts;
      tokens.promptTokens += res.usage.promptTokens;
      tokens.completionTokens += res.usage.completionTokens;
      if (res.status === "labeled") {
        labeled++;
        if (Object.keys(res.repairs).length > 0) repaired++;
        for (const [k, n] of Object.entries(res.repairs)) repairs[k] = (repairs[k] ?? 0) + n;
      } else {
        rejected++;
        rejectedIds.push(`${uuid}/v${v}`);
        assert.ok(res.reasons.length > 0, `${uuid} v${v} is rejected with reasons`);
      }
    }
  }
  assert.equal(summary.labeled, labeled, "labeled");
  assert.equal(records.reduce((n, r) => n + r.checklists.length, 0), labeled, "variants in the dataset");
  assert.equal(summary.labeledRecords, records.length, "records in the dataset");
  assert.equal(summary.rejected, rejected, "rejected");
  assert.equal(summary.repaired, repaired, "repaired");
  assert.deepEqual(summary.repairs, repairs, "repairs per kind");
  assert.equal(summary.attempts, attempts, "calls behind the results");
  assert.deepEqual(summary.tokens, tokens, "tokens");
  const prices = { inputPer1M: TEST_PRICES.input, outputPer1M: TEST_PRICES.output };
  assert.ok(summary.costUsd !== null && Math.abs(summary.costUsd - costOf(tokens, prices)) < 1e-12, "cost");
  const report = await getJson<LabelReport>(store, summary.reportRef);
  assert.deepEqual(await store.getName(labelNames.report(summary.out)), summary.reportRef);
  assert.deepEqual(report.rejections.map((r) => `${r.uuid}/v${r.variant}`).sort(), rejectedIds.sort());
  assert.equal(
    summary.labeled + summary.rejected + summary.failed + summary.skipped,
    opts.uuids.length * variants,
    "every record-variant is accounted for",
  );
}
