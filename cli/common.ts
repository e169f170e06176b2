/**
 * What the CLI's command groups share: one-line errors, the Temporal client for a command, the store, links.
 *
 * @module
 */
import { InvalidArgumentError } from "commander";
import * as fs from "node:fs/promises";
import { type Client, type WorkflowHandle, WorkflowNotFoundError } from "@temporalio/client";
import { ConfigError, connectClient, loadRunConfig, ROOT, temporalAddress, webUiUrl } from "../config.ts";
import type { RunConfig } from "../core/config.ts";
import type { ArtifactStore } from "../store/mod.ts";
import { openStore } from "../store/open.ts";

/** Option parser: a positive integer. */
export function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive integer, got ${v}`);
  return n;
}

/** Option parser: a finite number ≥ 0. */
export function nonNegative(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError(`expected a non-negative number, got ${v}`);
  }
  return n;
}

/** Prints `error: …` and exits 1. */
export function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

/** The store named by `--store` (a URL or path; default `$CM2_STORE_URL` or `file:.cm2/store`). */
export function storeFrom(opts: { store?: string }): ArtifactStore {
  return openStore(opts.store ?? Deno.env.get("CM2_STORE_URL") ?? "file:.cm2/store", ROOT);
}

/** A file's text. */
export async function readText(p: string): Promise<string> {
  return await fs.readFile(p, "utf8");
}

/** Runs `fn` with a connected Temporal client, or fails with how to start Temporal. */
export async function withClient<T>(
  fn: (c: Awaited<ReturnType<typeof connectClient>>) => Promise<T>,
): Promise<T> {
  let conn;
  try {
    conn = await connectClient();
  } catch (err) {
    fail(
      `Cannot reach Temporal at ${temporalAddress()}: ${(err as Error).message}. ` +
        "Start it with `deno task dev`, or set TEMPORAL_ADDRESS",
    );
  }
  try {
    return await fn(conn);
  } finally {
    await conn.connection.close();
  }
}

/** The Web UI link of a workflow. */
export function workflowLink(id: string): string {
  return `${webUiUrl()}/namespaces/default/workflows/${encodeURIComponent(id)}`;
}

/** Loads a run config for a command, or fails with its issues in one message. */
export async function configOrFail(file?: string): Promise<RunConfig> {
  try {
    return await loadRunConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

/**
 * Attaches to workflow `id` when it is running, else starts it with `start`; says which on stderr (with the
 * Web UI link of a new one). Returns its handle.
 */
export async function startOrAttach(
  client: Client,
  id: string,
  start: () => Promise<unknown>,
): Promise<WorkflowHandle> {
  const handle = client.workflow.getHandle(id);
  const running = await handle.describe().then((d) => d.status.name === "RUNNING", (err) => {
    if (err instanceof WorkflowNotFoundError) return false;
    throw err;
  });
  if (running) console.error(`attached to running ${id}`);
  else {
    await start();
    console.error(`started ${id}; Web UI: ${workflowLink(id)}`);
  }
  return handle;
}
