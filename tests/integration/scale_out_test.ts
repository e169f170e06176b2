/**
 * Scale-out: one training iteration on two orchestrator worker processes (the real `worker.ts`) and the trainer
 * worker, sharing nothing but a Temporal server and an S3 store (moto on 127.0.0.1; the dataset is imported into
 * the bucket, so no worker reads a shared file). One orchestrator is killed with SIGKILL mid-iteration. The run
 * must complete with exactly one update, and the episode histories must show both workers' identities.
 */
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import assert from "node:assert/strict";
import * as os from "node:os";
import { parseRunConfig } from "../../core/config.ts";
import { workflowIds } from "../../core/names.ts";
import { saveDataset } from "../../store/datasets.ts";
import { openStore } from "../../store/open.ts";
import { ROOT } from "../../scripts/paths.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";
import { trainingRun } from "../../workflows/training.ts";
import { startScriptedServer } from "../scripted_server.ts";
import { createTestTrainer } from "../test_trainer.ts";
import { trainingRoles } from "../harness/scripted_models.ts";
import { startS3Server } from "../harness/s3_server.ts";
import { uniqueQueue, useTemporal } from "../harness/temporal.ts";
import { sampleRecords } from "../harness/training.ts";

Deno.test({
  name:
    "two orchestrator workers and the trainer share an S3 store; one is killed mid-iteration; the run completes",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const temporal = await useTemporal();
    const s3 = await startS3Server();
    const records = await sampleRecords();
    const models = startScriptedServer({
      roles: trainingRoles(records),
      adapters: true,
      latencyMs: 40,
    });
    const storeUrl = await s3.newStoreUrl("cm2");
    const store = openStore(storeUrl, ROOT);
    await saveDataset(store, "sample", records, {
      sources: [{
        file: "data/sample/tooltalk_sample.jsonl",
        format: "cm2",
        imported: records.length,
        errors: 0,
      }],
    });
    const taskQueue = uniqueQueue("scale");
    const trainerQueue = uniqueQueue("scale-trainer");
    const name = `scale-${crypto.randomUUID().slice(0, 6)}`;
    const role = (model: string) => ({ baseURL: models.url, model, timeoutMs: 5_000 });
    const parsed = parseRunConfig({
      name,
      dataset: { path: "datasets/sample", heldOut: 0 },
      models: {
        policy: { ...role("policy-model"), adapterApi: "cm2" },
        judge: role("judge-model"),
        simulator: role("sim-model"),
        labeler: role("labeler-model"),
      },
      cm2: { iterations: 1, tasksPerIteration: 4, groupSize: 4, episodeConcurrency: 16 },
      trainer: { taskQueue: trainerQueue },
      store: { url: storeUrl },
    });
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
    const connection = await NativeConnection.connect({ address: temporal.address });
    const client = new Client({ connection });
    const trainer = createTestTrainer(store);
    const trainerWorker = await Worker.create({
      connection,
      taskQueue: trainerQueue,
      activities: trainer.activities,
    });
    const trainerRunning = trainerWorker.run();
    const workers = [
      spawnWorker(temporal.address, taskQueue, storeUrl),
      spawnWorker(temporal.address, taskQueue, storeUrl),
    ];
    const identities = workers.map((w) => `${w.pid}@${os.hostname()}`);
    try {
      const handle = await client.workflow.start(trainingRun, {
        taskQueue,
        workflowId: workflowIds.run(name),
        args: [{ config: parsed.config }],
      });
      // Kill the first worker once the iteration is well under way (a third of the calls of a quiet run).
      const deadline = Date.now() + 120_000;
      while (models.calls.length < 60 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(models.calls.length >= 60, `only ${models.calls.length} model calls after 120 s`);
      workers[0]!.kill("SIGKILL");
      await workers[0]!.status;
      const result = await handle.result();
      assert.equal(result.iterations, 1);
      assert.equal(result.policyVersion, 1, "one update was published");
      assert.equal(trainer.log.applied.get(`${name}/0`), 1, "the trainer applied exactly one update");
      assert.ok(await store.getName(`runs/${name}/checkpoints/it-0`), "the checkpoint is in the bucket");

      // Which worker ran each episode's tasks, from the histories' worker identities.
      const seen = new Set<string>();
      for (let task = 0; task < 4; task++) {
        for (let ep = 0; ep < 4; ep++) {
          const history = await client.workflow.getHandle(workflowIds.episode(name, 0, task, ep))
            .fetchHistory();
          for (const e of history.events ?? []) {
            const id = e.workflowTaskCompletedEventAttributes?.identity ??
              e.activityTaskStartedEventAttributes?.identity;
            if (id) seen.add(id);
          }
        }
      }
      for (const id of identities) assert.ok(seen.has(id), `no episode ran on ${id}; seen: ${[...seen]}`);
    } finally {
      for (const w of workers) {
        try {
          w.kill("SIGTERM");
        } catch { /* gone */ }
        await w.status;
      }
      trainerWorker.shutdown();
      await trainerRunning;
      await connection.close();
      await models.close();
      await s3.stop();
      await temporal.release();
    }
  },
});
