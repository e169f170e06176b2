/**
 * The orchestrator worker: every workflow plus every non-GPU activity (LLM calls, tool
 * simulation, judging, rewards, store), on the `cm2-orchestrator` task queue. Connection comes
 * from Temporal's standard environment configuration; model endpoints and keys from the run
 * config each workflow carries (keys only ever from the environment).
 *
 * Usage: `deno task worker [--task-queue NAME] [--store URL]` (default `$CM2_STORE_URL` or `file:.cm2/store`;
 * every worker of a deployment and each run's `store.url` name the same store).
 *
 * @module
 */
import { DefaultLogger, Runtime, Worker } from "@temporalio/worker";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { createActivities } from "./activities/mod.ts";
import { connectWorker, modelFactory, ROOT } from "./config.ts";
import { openStore } from "./store/open.ts";
import { EVAL_QUEUE, ORCHESTRATOR_QUEUE } from "./core/names.ts";
import { createEvalActivities } from "./activities/eval.ts";
import { CachedStore } from "./store/cached.ts";

/** Options of {@linkcode runWorker}. */
export interface WorkerOptions {
  taskQueue: string;
  /** Store URL (`file:…`, a path, or `s3://…`; relative paths from the project root). */
  store: string;
  /** Activity slots (default 256): mostly model calls waiting on HTTP, so far more than cores. */
  maxConcurrentActivities?: number;
  /** Workflow task slots (SDK default when unset). */
  maxConcurrentWorkflowTasks?: number;
  /** Threads that run workflow code (SDK default when unset). */
  workflowThreads?: number;
  /** Also serve evaluations on this task queue (`cm2-eval`; empty: not). */
  evalQueue?: string;
}

/** Creates the orchestrator worker and runs it until SIGINT/SIGTERM. */
export async function runWorker(opts: WorkerOptions): Promise<void> {
  const store = openStore(opts.store, ROOT);
  const { connection, namespace } = await connectWorker();
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue: opts.taskQueue,
    workflowsPath: fileURLToPath(new URL("./workflows/mod.ts", import.meta.url)),
    activities: createActivities({ store, models: modelFactory, root: ROOT }),
    maxConcurrentActivityTaskExecutions: opts.maxConcurrentActivities ?? 256,
    ...(opts.maxConcurrentWorkflowTasks
      ? { maxConcurrentWorkflowTaskExecutions: opts.maxConcurrentWorkflowTasks }
      : {}),
    ...(opts.workflowThreads ? { workflowThreadPoolSize: opts.workflowThreads } : {}),
    shutdownGraceTime: "10 seconds",
  });
  // Evaluations (`cm2 eval`, and a run's periodic checkpoint evaluations) on their own queue, so their long
  // harness processes never take the orchestrator's activity slots.
  const evalWorker = opts.evalQueue
    ? await Worker.create({
      connection,
      namespace,
      taskQueue: opts.evalQueue,
      workflowsPath: fileURLToPath(new URL("./workflows/mod.ts", import.meta.url)),
      activities: createEvalActivities({ store, cached: new CachedStore(store), root: ROOT }),
      maxConcurrentActivityTaskExecutions: 16,
      shutdownGraceTime: "10 seconds",
    })
    : null;
  console.log(
    `cm2 worker on task queue ${opts.taskQueue}${
      opts.evalQueue ? ` and ${opts.evalQueue}` : ""
    } (namespace ${namespace}); store ${store.url}`,
  );
  await Promise.all([worker.run(), evalWorker?.run()]);
  await connection.close();
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "task-queue": { type: "string", default: ORCHESTRATOR_QUEUE },
      "eval-queue": { type: "string", default: EVAL_QUEUE },
      store: { type: "string", default: Deno.env.get("CM2_STORE_URL") ?? "file:.cm2/store" },
      "log-level": { type: "string", default: "WARN" },
      "max-activities": { type: "string" },
      "max-workflow-tasks": { type: "string" },
      "workflow-threads": { type: "string" },
    },
  });
  const int = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  Runtime.install({ logger: new DefaultLogger(values["log-level"] as "WARN") });
  await runWorker({
    taskQueue: values["task-queue"],
    evalQueue: values["eval-queue"],
    store: values.store,
    ...(values["max-activities"] ? { maxConcurrentActivities: int(values["max-activities"])! } : {}),
    ...(values["max-workflow-tasks"]
      ? { maxConcurrentWorkflowTasks: int(values["max-workflow-tasks"])! }
      : {}),
    ...(values["workflow-threads"] ? { workflowThreads: int(values["workflow-threads"])! } : {}),
  });
}
