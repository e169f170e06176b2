/**
 * Keys never leak: a training run and a labeling run whose roles read a distinctive key from the environment,
 * with a judge endpoint that answers some calls with a 401 echoing part of the key (as providers do). Afterwards
 * neither the key nor its first 8 characters may appear in any workflow history of the runs (every payload
 * decoded), in the orchestrator worker's log (a child process at DEBUG), or anywhere in the store.
 */
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseRunConfig } from "../../core/config.ts";
import { LABEL_PROMPT_VERSION } from "../../core/labeling.ts";
import { workflowIds } from "../../core/names.ts";
import { saveDataset } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";
import { workerArgs } from "../../scripts/worker_process.ts";
import { labelDataset } from "../../workflows/labeling.ts";
import { trainingRun } from "../../workflows/training.ts";
import { type ParsedChatRequest, startScriptedServer } from "../scripted_server.ts";
import { createTestTrainer } from "../test_trainer.ts";
import { toolTalkRecords } from "../harness/labeling.ts";
import { ruleLabeler } from "../harness/scripted_labeler.ts";
import { echoSimulator, hashJudge, referencePolicy } from "../harness/scripted_models.ts";
import { uniqueQueue, useTemporal } from "../harness/temporal.ts";
import { sampleRecords } from "../harness/training.ts";

const KEY_ENV = "CM2_CANARY_KEY";

/** Every string in a value, with byte arrays (Temporal payloads) decoded as UTF-8. */
function texts(value: unknown, out: string[] = []): string[] {
  if (typeof value === "string") out.push(value);
  else if (value instanceof Uint8Array) out.push(new TextDecoder().decode(value));
  else if (Array.isArray(value)) { for (const v of value) texts(v, out); }
  else if (value && typeof value === "object") { for (const v of Object.values(value)) texts(v, out); }
  return out;
}

Deno.test({
  name:
    "a key in the environment never reaches a history, the worker's log or the store, even when echoed in a 401",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const key = `sk-cm2canary-${crypto.randomUUID().replaceAll("-", "")}`;
    const needles = [key, key.slice(0, 8)];
    Deno.env.set(KEY_ENV, key);
    const temporal = await useTemporal();
    const records = await sampleRecords();
    const toLabel = await toolTalkRecords(3);
    let judged = 0;
    let echoed = 0;
    const judge = hashJudge(0.7);
    const models = startScriptedServer({
      roles: {
        "policy-model": referencePolicy(records, { deviateEvery: 3 }),
        "judge-model": (req: ParsedChatRequest, i: number) => {
          judged++;
          if (i % 4 !== 1) return judge(req, i);
          echoed++;
          const sent = (req.headers["authorization"] ?? "").replace(/^Bearer /, "");
          return {
            fault: "500",
            status: 401,
            message: `Incorrect API key provided: ${sent.slice(0, 12)}****${sent.slice(-4)}. Full: ${sent}`,
          };
        },
        "sim-model": echoSimulator(),
        "labeler-model": ruleLabeler(toLabel),
      },
      adapters: true,
    });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-canary-"));
    const store = new FsStore(dir);
    const taskQueue = uniqueQueue("canary");
    const trainerQueue = uniqueQueue("canary-trainer");
    const name = `canary-${crypto.randomUUID().slice(0, 6)}`;
    const role = (model: string) => ({ baseURL: models.url, model, timeoutMs: 5_000, apiKeyEnv: KEY_ENV });
    const parsed = parseRunConfig({
      name,
      dataset: { path: "data/sample/tooltalk_sample.jsonl", heldOut: 0 },
      models: {
        policy: { ...role("policy-model"), adapterApi: "cm2" },
        judge: role("judge-model"),
        simulator: role("sim-model"),
        labeler: { ...role("labeler-model"), prices: { input: 1, output: 1 } },
      },
      cm2: { iterations: 1, tasksPerIteration: 2, groupSize: 2, episodeConcurrency: 4 },
      trainer: { taskQueue: trainerQueue },
      store: { url: dir },
    });
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
    const config = parsed.config;
    const connection = await NativeConnection.connect({ address: temporal.address });
    const client = new Client({ connection });
    const trainerWorker = await Worker.create({
      connection,
      taskQueue: trainerQueue,
      activities: createTestTrainer(store).activities,
    });
    const trainerRunning = trainerWorker.run();
    const worker = new Deno.Command(Deno.execPath(), {
      args: workerArgs(taskQueue, dir, { logLevel: "DEBUG" }),
      env: { TEMPORAL_ADDRESS: temporal.address },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const log = Promise.all([worker.stdout, worker.stderr].map((s) => new Response(s).text()));
    try {
      const result = await client.workflow.execute(trainingRun, {
        taskQueue,
        workflowId: workflowIds.run(name),
        args: [{ config }],
      });
      assert.equal(result.iterations, 1);
      assert.ok(echoed > 0 && judged > echoed, `judge calls ${judged}, 401s echoing the key ${echoed}`);
      await saveDataset(store, "src", toLabel, {
        sources: [{ file: "test", format: "test", imported: toLabel.length, errors: 0 }],
      });
      const out = `canary-out-${crypto.randomUUID().slice(0, 6)}`;
      const summary = await client.workflow.execute(labelDataset, {
        taskQueue,
        workflowId: workflowIds.label(out),
        args: [{
          config,
          dataset: "src",
          out,
          promptVersion: LABEL_PROMPT_VERSION,
          variants: 1,
          concurrency: 2,
          maxAttempts: 3,
          weightRepairTolerance: 0.05,
          budget: {},
        }],
      });
      assert.ok(summary.labeled > 0, JSON.stringify(summary));
      const sentKeys = models.calls.filter((c) => c.headers["authorization"] === `Bearer ${key}`).length;
      assert.equal(
        sentKeys,
        models.calls.length,
        "every call carried the key (so it was in the workers' hands)",
      );

      // Histories: the run, its iterations, groups and episodes, and the labeling run.
      const hits: string[] = [];
      let histories = 0;
      for await (const wf of client.workflow.list()) {
        if (!wf.workflowId.startsWith(workflowIds.run(name)) && wf.workflowId !== workflowIds.label(out)) {
          continue;
        }
        const history = await client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory();
        histories++;
        for (const t of texts(history)) {
          for (const n of needles) if (t.includes(n)) hits.push(`history ${wf.workflowId}`);
        }
      }
      assert.ok(histories >= 1 + 1 + 2 + 4 + 1, `only ${histories} histories searched`);
      // The store: every blob and every name.
      const walk = async (d: string): Promise<void> => {
        for (const e of await fs.readdir(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) await walk(p);
          else {
            const text = await fs.readFile(p, "latin1");
            for (const n of needles) if (text.includes(n)) hits.push(`store ${path.relative(dir, p)}`);
          }
        }
      };
      await walk(dir);
      worker.kill("SIGTERM");
      await worker.status;
      const workerLog = (await log).join("");
      assert.ok(workerLog.length > 0, "the worker logged");
      for (const n of needles) if (workerLog.includes(n)) hits.push("worker log");
      assert.deepEqual(hits, [], `the key or its first 8 characters leaked: ${hits.join(", ")}`);
    } finally {
      try {
        worker.kill("SIGKILL");
      } catch { /* gone */ }
      await worker.status;
      trainerWorker.shutdown();
      await trainerRunning;
      await connection.close();
      await models.close();
      await fs.rm(dir, { recursive: true, force: true });
      await temporal.release();
      Deno.env.delete(KEY_ENV);
    }
  },
});
