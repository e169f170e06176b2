/**
 * Records workflow histories for the replay tests: runs each workflow against a private dev
 * server with a real worker and writes its history as JSON to `tests/replay/histories/`.
 * Re-run after an intended workflow change (and keep old histories that running workflows may still have):
 * `deno run -A tests/replay/record.ts`.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { Client, Connection } from "@temporalio/client";
import { historyToJSON } from "@temporalio/common/lib/proto-utils.js";
import { NativeConnection, Worker } from "@temporalio/worker";
import { createActivities } from "../../activities/mod.ts";
import { FsStore } from "../../store/fs_store.ts";
import { modelFactory, ROOT } from "../../config.ts";
import { smokeWorkflow } from "../../workflows/smoke.ts";
import { uniqueQueue, useTemporal, workflowBundle } from "../harness/temporal.ts";

const OUT = new URL("./histories/", import.meta.url);

const temporal = await useTemporal();
const storeRoot = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-record-"));
const taskQueue = uniqueQueue("record");
const nc = await NativeConnection.connect({ address: temporal.address });
const worker = await Worker.create({
  connection: nc,
  taskQueue,
  workflowBundle: await workflowBundle(),
  activities: createActivities({ store: new FsStore(storeRoot), models: modelFactory, root: ROOT }),
});
const connection = await Connection.connect({ address: temporal.address });
const client = new Client({ connection });
await worker.runUntil(async () => {
  const handle = await client.workflow.start(smokeWorkflow, {
    taskQueue,
    workflowId: "smoke/recorded",
    args: [{ name: "replay" }],
  });
  await handle.result();
  const history = await handle.fetchHistory();
  await fs.writeFile(new URL("smoke.json", OUT), historyToJSON(history) + "\n");
});
await connection.close();
await nc.close();
await temporal.release();
console.log("recorded tests/replay/histories/smoke.json");
