/**
 * `sftRun` end to end with the real Python trainer worker on the embedded SmolLM2-135M (CPU): two records of
 * the sample data, a held-out record, a checkpoint every step. The trainer is killed with SIGKILL after its
 * first checkpoint; Temporal retries the activity on a new trainer after the heartbeat timeout, which resumes
 * from that checkpoint without repeating it. A second run of the finished SFT is answered from the store.
 */
import assert from "node:assert/strict";
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createActivities } from "../../activities/mod.ts";
import { modelFactory } from "../../config.ts";
import { parseRunConfig } from "../../core/config.ts";
import { workflowIds } from "../../core/names.ts";
import { PYTHON, ROOT } from "../../scripts/paths.ts";
import { saveDataset } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson } from "../../store/mod.ts";
import { sftRun } from "../../workflows/sft.ts";
import { uniqueQueue, useTemporal, workflowBundle } from "../harness/temporal.ts";
import { sampleRecords } from "../harness/training.ts";

function spawnTrainer(address: string, storeUrl: string, queue: string): Deno.ChildProcess {
  return new Deno.Command(PYTHON, {
    args: ["-m", "cm2_trainer.worker", "--store", storeUrl, "--task-queue", queue, "--log-level", "WARNING"],
    env: { TEMPORAL_ADDRESS: address, PYTHONPATH: path.join(ROOT, "trainer") },
    stdout: "null",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
}

Deno.test({
  name:
    "cm2 sft trains SmolLM2 on CPU, survives a trainer SIGKILL after a checkpoint, and re-runs from the store",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-sft-"));
    const store = new FsStore(path.join(dir, "store"));
    const taskQueue = uniqueQueue("orch");
    const trainerQueue = uniqueQueue("trainer");
    // the two shortest records to train on, the next one held out
    const records = (await sampleRecords()).sort((a, b) =>
      JSON.stringify(a).length - JSON.stringify(b).length
    );
    await saveDataset(store, "s-sft", records.slice(0, 2), { sources: [] });
    await saveDataset(store, "s-heldout", records.slice(2, 3), { sources: [] });
    const parsed = parseRunConfig({
      name: `sft-${crypto.randomUUID().slice(0, 6)}`,
      sft: {
        dataset: "datasets/s-sft",
        heldOut: "datasets/s-heldout",
        maxSteps: 3,
        batchSize: 1,
        checkpointEvery: 1,
        epochs: 2,
      },
      trainer: { taskQueue: trainerQueue, heartbeatTimeoutS: 60 },
      store: { url: store.root },
    });
    assert.ok(parsed.ok, JSON.stringify(parsed));
    const config = parsed.config;
    const nc = await NativeConnection.connect({ address: temporal.address });
    const orchestrator = await Worker.create({
      connection: nc,
      taskQueue,
      workflowBundle: await workflowBundle(),
      activities: createActivities({ store, models: modelFactory, root: ROOT }),
    });
    const running = orchestrator.run();
    const client = new Client({ connection: nc });
    let trainer = spawnTrainer(temporal.address, store.url, trainerQueue);
    try {
      const handle = await client.workflow.start(sftRun, {
        taskQueue,
        workflowId: workflowIds.sft(config.name),
        args: [{ config }],
      });
      // kill the trainer once its first checkpoint is stored, then start another
      const first = `sft/${config.name}/step-1`;
      for (let i = 0; i < 1800 && !(await store.getName(first)); i++) {
        await new Promise((r) => setTimeout(r, 200));
      }
      const step1 = await store.getName(first);
      assert.ok(step1, "the first checkpoint was written");
      trainer.kill("SIGKILL");
      await trainer.status;
      trainer = spawnTrainer(temporal.address, store.url, trainerQueue);

      const result = await handle.result();
      assert.equal(result.steps, 3);
      assert.equal(result.reused, false);
      assert.deepEqual(result.history.map((h) => h.step), [1, 2, 3]);
      for (const h of result.history) {
        assert.ok(Number.isFinite(h.loss) && h.loss! > 0, `loss ${h.loss}`);
        assert.ok(Number.isFinite(h.heldOutLoss) && h.heldOutLoss! > 0, `held-out loss ${h.heldOutLoss}`);
      }
      // the resumed run kept the first checkpoint (first writer wins) and finished from it
      assert.equal((await store.getName(first))!.uri, step1.uri);
      const final = await store.getName(`sft/${config.name}/final`);
      assert.equal(final?.uri, result.checkpoint.uri);
      const manifest = await getJson<{ schema: string; step: number; files: Record<string, unknown> }>(
        store,
        final!,
      );
      assert.equal(manifest.schema, "cm2.sft-checkpoint/v1");
      assert.equal(manifest.step, 3);
      assert.ok("adapter_config.json" in manifest.files && "adapter_model.safetensors" in manifest.files);
      const history = await client.workflow.getHandle(workflowIds.sft(config.name)).fetchHistory();
      const attempts = history.events?.filter((e) => e.activityTaskStartedEventAttributes).map((e) =>
        e.activityTaskStartedEventAttributes!.attempt
      );
      assert.ok((attempts ?? []).some((a) => (a ?? 0) >= 2), "the SFT activity ran again after the kill");

      // a second run of the finished SFT is answered from the store
      const again = await client.workflow.execute(sftRun, {
        taskQueue,
        workflowId: `${workflowIds.sft(config.name)}-again`,
        args: [{ config }],
      });
      assert.equal(again.reused, true);
      assert.equal(again.checkpoint.uri, result.checkpoint.uri);
    } finally {
      try {
        trainer.kill("SIGKILL");
      } catch { /* gone */ }
      await trainer.status;
      orchestrator.shutdown();
      await running;
      await nc.close();
      await temporal.release();
      await fs.rm(dir, { recursive: true, force: true });
    }
  },
});
