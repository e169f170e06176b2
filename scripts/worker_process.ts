/**
 * How to run the orchestrator worker (`worker.ts`) as a child process: the Deno permissions it
 * needs and its flags. Used by `task start`, the chaos harness, the benchmark and crash tests, so
 * they all run the real worker the same way. Runtime: Deno.
 *
 * @module
 */
import * as path from "node:path";
import { ROOT } from "./paths.ts";

/**
 * The permissions the worker runs with (`--allow-ffi` is the Temporal core bridge; `--allow-run` the evaluation
 * harness, one Python process per benchmark task).
 */
export const WORKER_PERMISSIONS = [
  "--allow-env",
  "--allow-read",
  "--allow-write",
  "--allow-ffi",
  "--allow-sys",
  "--allow-net",
  "--allow-run",
];

/** `deno` arguments that run the worker on a task queue over a store (its URL or path). */
export function workerArgs(
  taskQueue: string,
  storeUrl: string,
  opts: { logLevel?: string; denoArgs?: string[]; workerArgs?: string[] } = {},
): string[] {
  return [
    "run",
    ...WORKER_PERMISSIONS,
    ...(opts.denoArgs ?? []),
    path.join(ROOT, "worker.ts"),
    "--task-queue",
    taskQueue,
    "--store",
    storeUrl,
    ...(opts.logLevel ? ["--log-level", opts.logLevel] : []),
    ...(opts.workerArgs ?? []),
  ];
}

/** Starts the worker against a Temporal address; its stderr goes to ours, stdout is dropped. */
export function spawnWorker(
  address: string,
  taskQueue: string,
  storeUrl: string,
  opts: { denoArgs?: string[]; workerArgs?: string[] } = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: workerArgs(taskQueue, storeUrl, { logLevel: "ERROR", ...opts }),
    env: { TEMPORAL_ADDRESS: address },
    stdout: "null",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
}
