/**
 * Records workflow histories for the replay tests: runs each workflow against a private dev server
 * with real workers (the scripted model server and test-only trainer stand in for models and GPU)
 * and writes its history as JSON to `tests/replay/histories/`. Re-run after an intended workflow
 * change, keeping the old files while running workflows may still have them:
 * `deno run -A tests/replay/record.ts`.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import { historyToJSON } from "@temporalio/common/lib/proto-utils.js";
import { workflowIds } from "../../core/names.ts";
import { smokeWorkflow } from "../../workflows/smoke.ts";
import { trainingRun } from "../../workflows/training.ts";
import { labelDataset, labelWorkflowId } from "../../workflows/labeling.ts";
import { labelingStack } from "../harness/labeling.ts";
import { useTemporal } from "../harness/temporal.ts";
import { sampleRecords, scriptedConfig, trainingStack } from "../harness/training.ts";

const OUT = new URL("./histories/", import.meta.url);

const temporal = await useTemporal();
const stack = await trainingStack(temporal.address);
const stop = await stack.startWorkers();
const save = async (file: string, workflowId: string) => {
  const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
  await fs.writeFile(new URL(file, OUT), historyToJSON(history) + "\n");
  console.log(`recorded tests/replay/histories/${file}`);
};
try {
  await stack.client.workflow.execute(smokeWorkflow, {
    taskQueue: stack.taskQueue,
    workflowId: "smoke/recorded",
    args: [{ name: "replay" }],
  });
  await save("smoke.json", "smoke/recorded");
  const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
    iterations: 1,
    tasksPerIteration: 1,
    groupSize: 2,
  }, "recorded");
  await stack.client.workflow.execute(trainingRun, {
    taskQueue: stack.taskQueue,
    workflowId: workflowIds.run(config.name),
    args: [{ config }],
  });
  await save("training_run.json", workflowIds.run(config.name));
  await save("iteration.json", workflowIds.iteration(config.name, 0));
  await save("episode.json", workflowIds.episode(config.name, 0, 0, 0));
  // Labeling: two sample records, one answer rejected once (a retry with feedback in the history).
  const records = (await sampleRecords()).slice(0, 2);
  const labeling = await labelingStack(temporal.address, records, {
    script: (id, blocks) =>
      id.uuid === records[1]!.uuid && id.attempt === 1 ? { json: blocks.slice(1) } : undefined,
  });
  const stopLabeling = await labeling.startWorker();
  try {
    await labeling.saveRecords("sample", records);
    await labeling.client.workflow.execute(labelDataset, {
      taskQueue: labeling.taskQueue,
      workflowId: labelWorkflowId("recorded"),
      args: [labeling.input("sample", "recorded")],
    });
    const history = await labeling.client.workflow.getHandle(labelWorkflowId("recorded")).fetchHistory();
    await fs.writeFile(new URL("label_dataset.json", OUT), historyToJSON(history) + "\n");
    console.log("recorded tests/replay/histories/label_dataset.json");
  } finally {
    await stopLabeling();
    await labeling.close();
  }
} finally {
  await stop();
  await stack.close();
  await temporal.release();
}
