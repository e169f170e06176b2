/**
 * Test harness for the real Temporal dev server. `scripts/test.ts` starts one headless server
 * for the whole suite and passes its address in `CM2_TEST_TEMPORAL`; a test file run on its own
 * starts a private in-memory server instead. Workflow code is bundled once per process.
 *
 * @module
 */
import {
  bundleWorkflowCode,
  DefaultLogger,
  Runtime,
  type WorkflowBundleWithSourceMap,
} from "@temporalio/worker";
import { fileURLToPath } from "node:url";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";

// Keep test output readable: only warnings and errors from the SDK.
try {
  Runtime.install({ logger: new DefaultLogger("WARN") });
} catch { /* already installed by another test module in this process */ }

/** A server address plus how to let go of it. */
export interface TestTemporal {
  address: string;
  release(): Promise<void>;
}

/** The suite's shared server, or a private one when the variable is unset. */
export async function useTemporal(): Promise<TestTemporal> {
  const shared = Deno.env.get("CM2_TEST_TEMPORAL");
  if (shared) return { address: shared, release: async () => {} };
  const server = await startDevServer({ port: await freePort(), headless: true, dbFile: null, reuse: false });
  return { address: server.address, release: () => server.stop() };
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** The workflow bundle of `workflows/mod.ts`, built once per test process. */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({
    workflowsPath: fileURLToPath(new URL("../../workflows/mod.ts", import.meta.url)),
    logger: {
      log() {},
      trace() {},
      debug() {},
      info() {},
      warn() {},
      error: (m: string) => console.error(m),
    },
  });
  return bundle;
}

/** A task queue name unique to one test. */
export function uniqueQueue(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
}
