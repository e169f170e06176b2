import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import { createActivities } from "../../activities/mod.ts";
import { FsStore } from "../../store/fs_store.ts";
import { modelFactory, ROOT } from "../../config.ts";
import { smokeWorkflow } from "../../workflows/smoke.ts";
import { uniqueQueue, useTemporal, workflowBundle } from "../harness/temporal.ts";

Deno.test({
  name: "smokeWorkflow() round-trips through the real dev server and a Deno worker",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-smoke-"));
    const taskQueue = uniqueQueue("smoke");
    const nc = await NativeConnection.connect({ address: temporal.address });
    const worker = await Worker.create({
      connection: nc,
      taskQueue,
      workflowBundle: await workflowBundle(),
      activities: createActivities({ store: new FsStore(storeRoot), models: modelFactory, root: ROOT }),
    });
    const connection = await NativeConnection.connect({ address: temporal.address });
    try {
      const result = await worker.runUntil(async () => {
        const client = new Client({ connection });
        return await client.workflow.execute(smokeWorkflow, {
          taskQueue,
          workflowId: `smoke/${taskQueue}`,
          args: [{ name: "cm2" }],
        });
      });
      assert.deepEqual(result, { greeting: "hello, cm2" });
    } finally {
      await connection.close();
      await nc.close();
      await temporal.release();
      await fs.rm(storeRoot, { recursive: true, force: true });
    }
  },
});
