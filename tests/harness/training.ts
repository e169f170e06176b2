/**
 * A whole training stack for tests: the scripted model server (TEST DOUBLE), an orchestrator
 * worker and the test-only trainer worker, on unique task queues of a real dev server.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import { createActivities } from "../../activities/mod.ts";
import { modelFactory, ROOT } from "../../config.ts";
import { parseRunConfig, type RunConfig } from "../../core/config.ts";
import { type TrajectoryRecord, TrajectoryRecordSchema } from "../../core/records.ts";
import { FsStore } from "../../store/fs_store.ts";
import { type ScriptedServer, type ScriptHandler, startScriptedServer } from "../scripted_server.ts";
import { createTestTrainer, type TestTrainerLog } from "../test_trainer.ts";
import { trainingRoles } from "./scripted_models.ts";
import { uniqueQueue, workflowBundle } from "./temporal.ts";

/** The sample dataset's records. */
export async function sampleRecords() {
  const text = await fs.readFile(path.join(ROOT, "data/sample/tooltalk_sample.jsonl"), "utf8");
  return text.trim().split("\n").map((l) => TrajectoryRecordSchema.parse(JSON.parse(l)));
}

/** A record without its program checks: every item goes to the judge. */
export function withoutChecks(record: TrajectoryRecord): TrajectoryRecord {
  return {
    ...record,
    checklists: record.checklists.map((v) => v.map((t) => t.map(({ check: _, ...i }) => i))),
  };
}

/** A run config pointing every role at the scripted server. */
export function scriptedConfig(
  url: string,
  storeRoot: string,
  trainerQueue: string,
  cm2: Record<string, unknown>,
  name = "test",
): RunConfig {
  const role = (model: string) => ({ baseURL: url, model, timeoutMs: 5_000 });
  const parsed = parseRunConfig({
    name,
    dataset: { path: "data/sample/tooltalk_sample.jsonl", heldOut: 2 },
    models: {
      policy: { ...role("policy-model"), adapterApi: "cm2" },
      judge: role("judge-model"),
      simulator: role("sim-model"),
      labeler: role("labeler-model"),
    },
    cm2,
    trainer: { taskQueue: trainerQueue },
    store: { url: storeRoot },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
  return parsed.config;
}

/** A running test stack. */
export interface TrainingStack {
  server: ScriptedServer;
  store: FsStore;
  storeRoot: string;
  client: Client;
  taskQueue: string;
  trainerQueue: string;
  trainerLog: TestTrainerLog;
  /**
   * Starts both workers in this process (or only the trainer, with `orchestrator: false`, when the test runs
   * the orchestrator as a process it can kill); returns a function that stops them.
   */
  startWorkers(opts?: { orchestrator?: boolean }): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** Builds the stack against a Temporal address. */
export async function trainingStack(
  address: string,
  opts: { latencyMs?: number; pTrue?: number; roles?: Record<string, ScriptHandler> } = {},
): Promise<TrainingStack> {
  const records = await sampleRecords();
  const server = startScriptedServer({
    roles: {
      ...trainingRoles(records, opts.pTrue !== undefined ? { pTrue: opts.pTrue } : {}),
      ...opts.roles,
    },
    adapters: true,
    loraBase: "policy-model",
    ...(opts.latencyMs ? { latencyMs: opts.latencyMs } : {}),
  });
  const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-run-"));
  const store = new FsStore(storeRoot);
  const taskQueue = uniqueQueue("orch");
  const trainerQueue = uniqueQueue("trainer");
  const trainer = createTestTrainer(store);
  const connection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const bundle = await workflowBundle();
  return {
    server,
    store,
    storeRoot,
    client,
    taskQueue,
    trainerQueue,
    trainerLog: trainer.log,
    async startWorkers(opts: { orchestrator?: boolean } = {}) {
      const nc = await NativeConnection.connect({ address });
      const workers = [
        ...(opts.orchestrator === false ? [] : [
          await Worker.create({
            connection: nc,
            taskQueue,
            workflowBundle: bundle,
            activities: createActivities({ store, models: modelFactory, root: ROOT }),
            maxConcurrentActivityTaskExecutions: 32,
          }),
        ]),
        await Worker.create({ connection: nc, taskQueue: trainerQueue, activities: trainer.activities }),
      ];
      const running = Promise.all(workers.map((w) => w.run()));
      return async () => {
        for (const w of workers) w.shutdown();
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
 * Runs `fn` against a training stack on the shared dev server with both workers started; `restart` stops and
 * starts the workers again (a worker restart mid-run). With `killable`, the orchestrator worker is a `worker.ts`
 * process and `restart` kills it with SIGKILL before starting another. Everything is stopped and released
 * afterwards.
 */
export async function withTrainingStack(
  opts: Parameters<typeof trainingStack>[1] & { killable?: boolean },
  fn: (stack: TrainingStack, restart: () => Promise<void>) => Promise<void>,
): Promise<void> {
  const { useTemporal } = await import("./temporal.ts");
  const { spawnWorker } = await import("../../scripts/worker_process.ts");
  const temporal = await useTemporal();
  const stack = await trainingStack(temporal.address, opts);
  let stop = await stack.startWorkers({ orchestrator: !opts?.killable });
  let orchestrator = opts?.killable
    ? spawnWorker(temporal.address, stack.taskQueue, stack.storeRoot)
    : undefined;
  const killOrchestrator = async () => {
    if (!orchestrator) return;
    orchestrator.kill("SIGKILL");
    await orchestrator.status;
  };
  try {
    await fn(stack, async () => {
      if (orchestrator) {
        await killOrchestrator();
        orchestrator = spawnWorker(temporal.address, stack.taskQueue, stack.storeRoot);
      } else {
        await stop();
        stop = await stack.startWorkers();
      }
    });
  } finally {
    await killOrchestrator();
    await stop();
    await stack.close();
    await temporal.release();
  }
}
