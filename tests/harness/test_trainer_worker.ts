/**
 * Runs the test-only trainer (TEST DOUBLE, `tests/test_trainer.ts`) as its own worker process:
 * `deno run -A tests/harness/test_trainer_worker.ts --task-queue Q --store URL [--update-delay-ms N]
 * [--commit-log FILE]` (a line `<run>/<iteration>` per update this process commits) with
 * `TEMPORAL_ADDRESS` set. Tests that restart or kill things keep native Temporal workers out of the
 * test process this way.
 *
 * @module
 */
import { NativeConnection, Worker } from "@temporalio/worker";
import { parseArgs } from "node:util";
import { openStore } from "../../store/open.ts";
import { ROOT } from "../../scripts/paths.ts";
import { createTestTrainer } from "../test_trainer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "task-queue": { type: "string" },
    store: { type: "string" },
    "update-delay-ms": { type: "string" },
    "commit-log": { type: "string" },
  },
});
if (!values["task-queue"] || !values.store) throw new Error("--task-queue and --store are required");
const connection = await NativeConnection.connect({
  address: Deno.env.get("TEMPORAL_ADDRESS") ?? "127.0.0.1:7233",
});
const worker = await Worker.create({
  connection,
  taskQueue: values["task-queue"],
  activities: createTestTrainer(openStore(values.store, ROOT), undefined, {
    updateDelayMs: Number(values["update-delay-ms"] ?? 0),
    ...(values["commit-log"]
      ? {
        onCommit: (run: string, it: number) =>
          Deno.writeTextFile(values["commit-log"]!, `${run}/${it}\n`, { append: true }),
      }
      : {}),
  }).activities,
});
for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => worker.shutdown());
await worker.run();
await connection.close();
