/**
 * A record-stage stack for tests: the scripted server TEST DOUBLE playing the labeler role (its replies
 * come from a script keyed on the call's `Idempotency-Key`, `stage/<kind>/<version>/<uuid>/attempt-<a>`),
 * a temporary store holding the dataset, and an in-process orchestrator worker on a unique task queue of
 * a real dev server.
 *
 * @module
 */
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createActivities } from "../../activities/mod.ts";
import { RECORD_STAGES, stageNames, type StageResultBlob } from "../../activities/record_stage.ts";
import { modelFactory, ROOT } from "../../config.ts";
import type { RunConfig } from "../../core/config.ts";
import type { StageKind, StageParams } from "../../core/record_stage.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import { saveDataset } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson } from "../../store/mod.ts";
import type { StageRunInput } from "../../workflows/record_stage.ts";
import {
  type ParsedChatRequest,
  type ScriptedReply,
  type ScriptedServer,
  startScriptedServer,
} from "../scripted_server.ts";
import { labelingConfig } from "./labeling.ts";
import { uniqueQueue, workflowBundle } from "./temporal.ts";

/** What a stage call is about, from its idempotency key. */
export interface StageCall {
  kind: StageKind;
  promptVersion: string;
  uuid: string;
  attempt: number;
}

/** Parses `stage/<kind>/<version>/<uuid>/attempt-<a>`; undefined for other keys. */
export function stageCallOf(key: string | undefined): StageCall | undefined {
  const m = /^stage\/(filter|compress)\/([^/]+)\/(.+)\/attempt-(\d+)$/.exec(key ?? "");
  return m
    ? { kind: m[1] as StageKind, promptVersion: m[2]!, uuid: m[3]!, attempt: Number(m[4]) }
    : undefined;
}

/** Decides the labeler's reply to one stage call. */
export type StageScript = (call: StageCall, req: ParsedChatRequest) => ScriptedReply;

/** A running record-stage stack. */
export interface StageStack {
  server: ScriptedServer;
  store: FsStore;
  storeRoot: string;
  client: Client;
  taskQueue: string;
  config: RunConfig;
  saveRecords(name: string, records: readonly TrajectoryRecord[]): Promise<void>;
  /** Workflow input with test defaults (concurrency 4, 3 attempts, no budget). */
  input(kind: StageKind, dataset: string, out: string, over?: Partial<StageRunInput>): StageRunInput;
  /** The stored result of a record. */
  result(kind: StageKind, uuid: string, params?: StageParams): Promise<StageResultBlob | undefined>;
  /** The calls made for a record, in order. */
  callsOf(uuid: string): ScriptedServer["calls"];
  startWorker(): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** Builds the stack against a Temporal address. */
export async function stageStack(address: string, script: StageScript): Promise<StageStack> {
  const server = startScriptedServer({
    roles: {
      "labeler-model": (req) => {
        const call = stageCallOf(req.headers["idempotency-key"]);
        return call ? script(call, req) : { fault: "500", status: 400, message: "Not a stage call" };
      },
    },
  });
  const storeRoot = await mkdtemp(join(tmpdir(), "cm2-stage-"));
  const store = new FsStore(storeRoot);
  const connection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const taskQueue = uniqueQueue("stage");
  const config = labelingConfig(server.url, storeRoot);
  return {
    config,
    server,
    client,
    taskQueue,
    store,
    storeRoot,
    async saveRecords(name, records) {
      const source = { file: "stage-test", format: "test", imported: records.length, errors: 0 };
      await saveDataset(store, name, records, {
        sources: [source],
        derivedFrom: { step: "import", parent: null },
      });
    },
    input(kind, dataset, out, over = {}) {
      const params = over.params ?? (kind === "compress" ? { target: 0.5 } : {});
      return {
        kind,
        config,
        dataset,
        out,
        promptVersion: RECORD_STAGES[kind].promptVersion(params),
        params,
        concurrency: 4,
        maxAttempts: 3,
        budget: {},
        ...over,
      };
    },
    async result(kind, uuid, params = kind === "compress" ? { target: 0.5 } : {}) {
      const version = RECORD_STAGES[kind].promptVersion(params);
      const ref = await store.getName(stageNames.result(kind, version, uuid));
      return ref ? await getJson<StageResultBlob>(store, ref) : undefined;
    },
    callsOf(uuid) {
      return server.calls.filter((c) => stageCallOf(c.headers["idempotency-key"])?.uuid === uuid);
    },
    async startWorker() {
      const workerConnection = await NativeConnection.connect({ address });
      const worker = await Worker.create({
        workflowBundle: await workflowBundle(),
        activities: createActivities({ store, models: modelFactory, root: ROOT }),
        connection: workerConnection,
        taskQueue,
        maxConcurrentActivityTaskExecutions: 16,
      });
      let release = () => {};
      const released = new Promise<void>((resolve) => (release = resolve));
      const ran = worker.runUntil(released).finally(() => workerConnection.close());
      return () => {
        release();
        return ran;
      };
    },
    async close() {
      await Promise.all([server.close(), connection.close()]);
      await rm(storeRoot, { recursive: true, force: true });
    },
  };
}
