/**
 * The crash-resume proof (`deno task chaos [--kills N] [--seed S]`).
 *
 * Runs the same small training run twice against the real dev server and the scripted model
 * server (TEST DOUBLE), each with the real orchestrator worker (`worker.ts`) as a child process and
 * the test-only trainer in this process:
 *
 * 1. a baseline run, uninterrupted;
 * 2. a chaos run, whose worker is killed with SIGKILL at N random points (spread over the run by
 *    the number of model calls made so far) and restarted at once.
 *
 * It then checks that the chaos run completed, that no model call was repeated except those in
 * flight at a kill (calls carry an `Idempotency-Key` that is stable across activity retries), that
 * the trainer applied exactly one update per iteration, and that every episode's reward equals the
 * baseline's. It ends with one JSON line:
 * `{"kills":…,"completed":…,"in_flight_at_kills":…,"repeated_calls":…,"updates_per_iteration":…,"rewards_match":…}`.
 *
 * @module
 */
import { Client } from "@temporalio/client";
import { NativeConnection, Worker } from "@temporalio/worker";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";

import { workflowIds } from "../../core/names.ts";
import { prng } from "../../core/sampling.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson } from "../../store/mod.ts";
import { trainingRun } from "../../workflows/training.ts";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";
import { type RecordedCall, startScriptedServer } from "../scripted_server.ts";
import { createTestTrainer } from "../test_trainer.ts";
import { echoSimulator, hashJudge, referencePolicy } from "../harness/scripted_models.ts";
import { sampleRecords, scriptedConfig } from "../harness/training.ts";
import { uniqueQueue } from "../harness/temporal.ts";

/** The JSON line the chaos run reports. */
export interface ChaosReport {
  kills: number;
  completed: boolean;
  in_flight_at_kills: number;
  repeated_calls: number;
  updates_per_iteration: number | number[];
  rewards_match: boolean;
  seconds: number;
}

/** Options of {@linkcode runChaos}. */
export interface ChaosOptions {
  kills: number;
  seed?: number;
  /** Temporal address; a private dev server is started when absent. */
  address?: string;
  iterations?: number;
  log?: (line: string) => void;
}

/** A call counts as in flight at a kill if it was open within this window before the kill. */
const IN_FLIGHT_WINDOW_MS = 200;

async function episodeRewards(
  store: FsStore,
  runName: string,
  iterations: number,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (let it = 0; it < iterations; it++) {
    const ref = await store.getName(`runs/${runName}/metrics/it-${it}`);
    if (!ref) continue;
    const metrics = await getJson<{ rewards: Parameters<typeof getJson>[1] }>(store, ref);
    const rewards = await getJson<{ groups: { taskIndex: number; episodes: { reward: number }[] }[] }>(
      store,
      metrics.rewards,
    );
    for (const g of rewards.groups) {
      g.episodes.forEach((e, k) => out.set(`it-${it}/task-${g.taskIndex}/ep-${k}`, e.reward));
    }
  }
  return out;
}

function keyOf(call: RecordedCall): string | undefined {
  return call.headers["idempotency-key"];
}

/** Runs the baseline and the chaos run; returns the report. */
export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const started = performance.now();
  const log = opts.log ?? ((l: string) => console.error(`[chaos] ${l}`));
  const iterations = opts.iterations ?? 3;
  const rand = prng(opts.seed ?? 7);
  const server = opts.address
    ? undefined
    : await startDevServer({ port: await freePort(), headless: true, dbFile: null, reuse: false });
  const address = opts.address ?? server!.address;
  const records = await sampleRecords();
  const models = startScriptedServer({
    roles: {
      "policy-model": referencePolicy(records, { deviateEvery: 3 }),
      "judge-model": hashJudge(0.7),
      "sim-model": echoSimulator(),
    },
    adapters: true,
    latencyMs: 30,
  });
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-chaos-"));
  const connection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const nc = await NativeConnection.connect({ address });
  const cm2 = { iterations, tasksPerIteration: 2, groupSize: 3, episodeConcurrency: 6 };
  const workers: Deno.ChildProcess[] = [];
  let totalCalls = 0;

  const runOnce = async (label: string, kills: number) => {
    const storeRoot = path.join(tmp, label);
    const store = new FsStore(storeRoot);
    const taskQueue = uniqueQueue(`chaos-${label}`);
    const trainerQueue = uniqueQueue(`chaos-trainer-${label}`);
    const trainer = createTestTrainer(store);
    const trainerWorker = await Worker.create({
      connection: nc,
      taskQueue: trainerQueue,
      activities: trainer.activities,
    });
    const trainerRunning = trainerWorker.run();
    const name = `${label}-${crypto.randomUUID().slice(0, 6)}`;
    const config = scriptedConfig(models.url, storeRoot, trainerQueue, cm2, name);
    const firstCall = models.calls.length;
    let worker = spawnWorker(address, taskQueue, storeRoot);
    workers.push(worker);
    const handle = await client.workflow.start(trainingRun, {
      taskQueue,
      workflowId: workflowIds.run(name),
      args: [{ config }],
    });
    const killAt: number[] = [];
    let inFlight = 0;
    if (kills > 0) {
      const total = totalCalls;
      const points = Array.from({ length: kills }, () => 0.05 + 0.9 * rand()).sort((a, b) => a - b);
      for (const p of points) killAt.push(Math.max(1, Math.floor(p * total)));
    }
    const done = handle.result().then(() => true, (err) => {
      log(`run ${name} failed: ${err}`);
      return false;
    });
    let finished = false;
    done.then(() => (finished = true));
    for (const [k, at] of killAt.entries()) {
      while (!finished && models.calls.length - firstCall < at) await new Promise((r) => setTimeout(r, 20));
      if (finished) break;
      const t = Date.now();
      worker.kill("SIGKILL");
      await worker.status;
      const open = models.calls.slice(firstCall).filter((c) =>
        c.startedAt <= t && (c.endedAt === undefined || c.endedAt >= t - IN_FLIGHT_WINDOW_MS)
      ).length;
      inFlight += open;
      log(
        `kill ${k + 1}/${killAt.length} after ${models.calls.length - firstCall} calls (${open} in flight)`,
      );
      worker = spawnWorker(address, taskQueue, storeRoot);
      workers.push(worker);
    }
    const completed = await done;
    worker.kill("SIGTERM");
    await worker.status;
    trainerWorker.shutdown();
    await trainerRunning;
    const calls = models.calls.slice(firstCall);
    const seen = new Map<string, number>();
    for (const c of calls) {
      const key = keyOf(c);
      if (key) seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    const repeated = [...seen.values()].reduce((n, v) => n + (v - 1), 0);
    const updates = Array.from(
      { length: iterations },
      (_, it) => trainer.log.applied.get(`${name}/${it}`) ?? 0,
    );
    return {
      name,
      completed,
      calls: calls.length,
      repeated,
      inFlight,
      kills: killAt.length,
      updates,
      rewards: await episodeRewards(store, name, iterations),
    };
  };

  try {
    log("baseline run (no kills)");
    const base = await runOnce("base", 0);
    log(`baseline: ${base.calls} model calls, completed=${base.completed}`);
    totalCalls = base.calls;
    log(`chaos run (${opts.kills} kills)`);
    const chaos = await runOnce("chaos", opts.kills);
    const rewardsMatch = base.rewards.size > 0 && base.rewards.size === chaos.rewards.size &&
      [...base.rewards].every(([k, v]) => chaos.rewards.get(k) === v);
    if (!rewardsMatch) {
      const diffs = [...base.rewards].filter(([k, v]) => chaos.rewards.get(k) !== v).slice(0, 5);
      log(
        `rewards differ (${base.rewards.size} vs ${chaos.rewards.size} episodes): ${
          JSON.stringify(diffs.map(([k, v]) => [k, v, chaos.rewards.get(k)]))
        }`,
      );
    }
    const perIteration = [...new Set(chaos.updates)];
    return {
      kills: chaos.kills,
      completed: chaos.completed && base.completed,
      in_flight_at_kills: chaos.inFlight,
      repeated_calls: chaos.repeated,
      updates_per_iteration: perIteration.length === 1 ? perIteration[0]! : chaos.updates,
      rewards_match: rewardsMatch,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    };
  } finally {
    for (const w of workers) {
      try {
        w.kill("SIGKILL");
      } catch { /* already exited */ }
    }
    await nc.close();
    await connection.close();
    await models.close();
    await server?.stop();
    if (Deno.env.get("CM2_CHAOS_KEEP")) log(`kept ${tmp}`);
    else await fs.rm(tmp, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { kills: { type: "string", default: "5" }, seed: { type: "string", default: "7" } },
  });
  const report = await runChaos({ kills: Number(values.kills), seed: Number(values.seed) });
  console.log(JSON.stringify(report));
  Deno.exit(report.completed && report.rewards_match && report.updates_per_iteration === 1 ? 0 : 1);
}
