/**
 * The crash-resume proof (`deno task chaos [--kills 20] [--iterations 3] [--faults 0.2] [--trainer-kill]
 * [--server-restart] [--seed S]`).
 *
 * Runs the same small training run twice against a private dev server (SQLite) and the scripted model server
 * (TEST DOUBLE), each with the real orchestrator worker (`worker.ts`) and the test-only trainer as child processes:
 *
 * 1. a baseline run, undisturbed, meeting the same model faults (`tests/harness/faults.ts`: a share of calls fail
 *    as real endpoints do — 429 with Retry-After, 500, a reset connection, a timeout, a truncated or non-JSON body —
 *    and some policy tool calls carry arguments that are not JSON);
 * 2. a chaos run, whose orchestrator worker is killed with SIGKILL at N random points (spread by the model calls
 *    made so far, each at a moment when every fault injected so far has been recorded), whose trainer is killed
 *    once during an update, and whose dev server is stopped and restarted once on the same database.
 *
 * It checks that the chaos run completed; that no model call was repeated except those in flight at a kill and the
 * retries of injected faults; that each iteration committed exactly one update; that every episode's reward equals
 * the baseline's; that every injected fault is in the iteration metrics (a retried call in `modelFaults`, or an
 * episode ended by `format-error`); and that no episode ended in an infrastructure failure (a "silent zero"). It
 * ends with one JSON line:
 * `{"iterations","kills","trainer_kills","server_restarts","faults_injected","faults_counted","completed",
 * "repeated_calls","in_flight_at_kills","updates_per_iteration","rewards_match","silent_zero_rewards","seconds"}`.
 *
 * @module
 */
import { Client, WorkflowFailedError } from "@temporalio/client";
import { NativeConnection } from "@temporalio/worker";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";

import { workflowIds } from "../../core/names.ts";
import { FAILURE_REASONS } from "../../core/episode.ts";
import { prng } from "../../core/sampling.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson, type Ref } from "../../store/mod.ts";
import { iterationProgressQuery, type IterationSummary, trainingRun } from "../../workflows/training.ts";
import { type DevServer, freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { ROOT } from "../../scripts/paths.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";
import { type RecordedCall, startScriptedServer } from "../scripted_server.ts";
import { trainingRoles } from "../harness/scripted_models.ts";
import { type InjectedFault, withFaults } from "../harness/faults.ts";
import { sampleRecords, scriptedConfig } from "../harness/training.ts";
import { uniqueQueue } from "../harness/temporal.ts";

/** The JSON line the chaos run reports. */
export interface ChaosReport {
  iterations: number;
  kills: number;
  trainer_kills: number;
  server_restarts: number;
  faults_injected: number;
  faults_counted: number;
  completed: boolean;
  in_flight_at_kills: number;
  repeated_calls: number;
  updates_per_iteration: number | number[];
  rewards_match: boolean;
  silent_zero_rewards: number;
  seconds: number;
}

/** Options of {@linkcode runChaos}. */
export interface ChaosOptions {
  kills: number;
  seed?: number;
  iterations?: number;
  /** Share of model calls that meet a fault (default 0). */
  faults?: number;
  /** Kill the trainer once during an update. */
  trainerKill?: boolean;
  /** Stop and restart the dev server once mid-run. */
  serverRestart?: boolean;
  log?: (line: string) => void;
}

/** A call counts as in flight at a kill if it was open within this window before the kill. */
const IN_FLIGHT_WINDOW_MS = 200;
/** The model clients' timeout in the chaos runs (the injected timeouts exceed it). */
const CLIENT_TIMEOUT_MS = 2_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One finished run's facts. */
interface RunFacts {
  name: string;
  completed: boolean;
  calls: RecordedCall[];
  inFlight: number;
  kills: number;
  trainerKills: number;
  restarts: number;
  commits: Map<string, number>;
  episodes: Map<string, { reward: number; endReason: string | null }>;
  modelFaults: number;
  injected: InjectedFault[];
}

async function episodesOf(store: FsStore, name: string, iterations: number) {
  const out = new Map<string, { reward: number; endReason: string | null }>();
  let modelFaults = 0;
  for (let it = 0; it < iterations; it++) {
    const ref = await store.getName(`runs/${name}/metrics/it-${it}`);
    if (!ref) continue;
    const metrics = await getJson<IterationSummary & { rewards: Ref }>(store, ref);
    modelFaults += Object.values(metrics.modelFaults ?? {}).reduce((a, b) => a + b, 0);
    const rewards = await getJson<
      { groups: { taskIndex: number; episodes: { reward: number; endReason: string | null }[] }[] }
    >(store, metrics.rewards);
    for (const g of rewards.groups) {
      g.episodes.forEach((e, k) =>
        out.set(`it-${it}/task-${g.taskIndex}/ep-${k}`, { reward: e.reward, endReason: e.endReason })
      );
    }
  }
  return { episodes: out, modelFaults };
}

/** Runs the baseline and the chaos run; returns the report. */
export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const started = performance.now();
  const log = opts.log ?? ((l: string) => console.error(`[chaos] ${l}`));
  const iterations = opts.iterations ?? 3;
  const rand = prng(opts.seed ?? 7);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-chaos-"));
  const port = await freePort();
  const dbFile = path.join(tmp, "temporal.sqlite");
  let server: DevServer = await startDevServer({ port, headless: true, dbFile, reuse: false });
  const address = server.address;
  const records = await sampleRecords();
  const faults = withFaults(trainingRoles(records), {
    rate: opts.faults ?? 0,
    seed: opts.seed ?? 7,
    timeoutMs: CLIENT_TIMEOUT_MS,
  });
  const models = startScriptedServer({ roles: faults.roles, adapters: true, latencyMs: 30 });
  const connection = await NativeConnection.connect({ address });
  const client = new Client({ connection });
  const cm2 = { iterations, tasksPerIteration: 2, groupSize: 3, episodeConcurrency: 6 };
  const children: Deno.ChildProcess[] = [];
  let totalCalls = 0;

  const runOnce = async (label: string, plan: { kills: number; trainerKill: boolean; restart: boolean }) => {
    const storeRoot = path.join(tmp, label);
    const store = new FsStore(storeRoot);
    const taskQueue = uniqueQueue(`chaos-${label}`);
    const trainerQueue = uniqueQueue(`chaos-trainer-${label}`);
    const commitLog = path.join(tmp, `${label}-commits.log`);
    const name = `${label}-${crypto.randomUUID().slice(0, 6)}`;
    const config = scriptedConfig(models.url, storeRoot, trainerQueue, cm2, name);
    for (const role of ["policy", "judge", "simulator"] as const) {
      config.models[role].timeoutMs = CLIENT_TIMEOUT_MS;
    }
    config.trainer.heartbeatTimeoutS = 5;
    const spawnTrainer = () => {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          path.join(ROOT, "tests/harness/test_trainer_worker.ts"),
          "--task-queue",
          trainerQueue,
          "--store",
          storeRoot,
          "--update-delay-ms",
          "1500",
          "--commit-log",
          commitLog,
        ],
        env: { TEMPORAL_ADDRESS: address },
        stdout: "null",
        stderr: "inherit",
      }).spawn();
      children.push(child);
      return child;
    };
    let trainer = spawnTrainer();
    let worker = spawnWorker(address, taskQueue, storeRoot);
    children.push(worker);
    const firstCall = models.calls.length;
    const firstFault = faults.injected.length;
    const handle = await client.workflow.start(trainingRun, {
      taskQueue,
      workflowId: workflowIds.run(name),
      args: [{ config }],
    });
    let finished = false;
    // The result long-poll fails while the dev server is down: ask again until the run has an outcome.
    const done = (async () => {
      for (const deadline = Date.now() + 15 * 60_000;;) {
        try {
          await handle.result();
          return true;
        } catch (err) {
          if (err instanceof WorkflowFailedError || Date.now() > deadline) {
            log(`run ${name} failed: ${err}`);
            return false;
          }
          await sleep(1_000);
        }
      }
    })().finally(() => (finished = true));
    const calls = () => models.calls.length - firstCall;

    // The transient faults injected so far that have no record in the store yet (by the hash in the record's name).
    const unrecorded = async () => {
      const recorded = new Set(
        (await store.listNames(`runs/${name}/`)).filter((n) => n.includes("/faults/")).map((n) =>
          n.split("/").at(-1)!.split("-")[0]
        ),
      );
      return faults.injected.slice(firstFault).filter((f) =>
        f.kind !== "invalid-arguments" &&
        !recorded.has(createHash("sha256").update(f.key).digest("hex").slice(0, 32))
      );
    };
    // A kill waits until every fault injected so far is recorded, so that no kill can lose one.
    const faultsSettled = async () => {
      for (const deadline = Date.now() + 15_000; Date.now() < deadline;) {
        if ((await unrecorded()).length === 0) return;
        await sleep(50);
      }
    };

    let trainerKills = 0;
    // One trainer kill during an update: each iteration is watched in turn until one lands (the worker that
    // answers the query may be down when the phase is polled).
    const trainerWatch = (async () => {
      if (!plan.trainerKill) return;
      for (let it = 0; it < iterations; it++) {
        while (!finished && trainerKills === 0) {
          const p = await client.workflow.getHandle(workflowIds.iteration(name, it)).query(
            iterationProgressQuery,
          )
            .catch(() => null);
          if (p?.phase === "update") {
            await sleep(300);
            trainer.kill("SIGKILL");
            await trainer.status;
            trainerKills++;
            log(`trainer killed during the update of iteration ${it}`);
            trainer = spawnTrainer();
            return;
          }
          if (p && p.phase !== "episodes" && p.phase !== "rewards") break;
          await sleep(50);
        }
      }
    })();

    let restarts = 0;
    let inFlight = 0;
    let kills = 0;
    let killing = Promise.resolve();
    /** One kill -9 of the orchestrator worker and its restart, after every injected fault is recorded. */
    const killWorker = (what: string) =>
      killing = killing.then(async () => {
        if (finished) return;
        await faultsSettled();
        const t = Date.now();
        worker.kill("SIGKILL");
        await worker.status;
        kills++;
        const open = models.calls.slice(firstCall).filter((c) =>
          c.startedAt <= t && (c.endedAt === undefined || c.endedAt >= t - IN_FLIGHT_WINDOW_MS)
        ).length;
        inFlight += open;
        log(`kill ${kills} ${what} after ${calls()} calls (${open} in flight)`);
        worker = spawnWorker(address, taskQueue, storeRoot);
        children.push(worker);
      });
    // One kill aimed at an iteration's reward computation: each iteration is watched in turn until one lands
    // (the phase is short, and the worker may be down when it is polled).
    let rewardKills = 0;
    const rewardWatch = (async () => {
      if (plan.kills === 0) return;
      for (let it = 0; it < iterations && rewardKills === 0; it++) {
        while (!finished) {
          const p = await client.workflow.getHandle(workflowIds.iteration(name, it)).query(
            iterationProgressQuery,
          )
            .catch(() => null);
          if (p?.phase === "rewards") {
            await killWorker(`during the reward computation of iteration ${it}`);
            rewardKills++;
            break;
          }
          if (p && p.phase !== "episodes") break;
          await sleep(5);
        }
      }
    })();
    const points = Array.from({ length: plan.kills }, () => 0.05 + 0.9 * rand()).sort((a, b) => a - b)
      .map((p) => Math.max(1, Math.floor(p * totalCalls)));
    const restartAt = plan.restart ? Math.floor(totalCalls / 2) : Infinity;
    for (const [k, at] of points.entries()) {
      while (!finished && calls() < at) {
        if (calls() >= restartAt && restarts === 0) {
          await server.stop();
          await sleep(1_000);
          server = await startDevServer({ port, headless: true, dbFile, reuse: false });
          restarts++;
          log(`dev server restarted after ${calls()} calls`);
        }
        await sleep(20);
      }
      if (finished) break;
      await killWorker(`(${k + 1} of ${points.length} at random points)`);
    }
    await rewardWatch;
    const completed = await done;
    await trainerWatch;
    for (const c of [worker, trainer]) {
      try {
        c.kill("SIGTERM");
      } catch { /* gone */ }
      await c.status;
    }
    const commits = new Map<string, number>();
    for (const line of (await fs.readFile(commitLog, "utf8").catch(() => "")).split("\n").filter(Boolean)) {
      commits.set(line, (commits.get(line) ?? 0) + 1);
    }
    const { episodes, modelFaults } = await episodesOf(store, name, iterations);
    for (const f of await unrecorded()) log(`fault without a record: ${f.kind} ${f.key}`);
    const facts: RunFacts = {
      name,
      completed,
      calls: models.calls.slice(firstCall),
      inFlight,
      kills,
      trainerKills,
      restarts,
      commits,
      episodes,
      modelFaults,
      injected: faults.injected.slice(firstFault),
    };
    return facts;
  };

  try {
    log(`baseline run (no kills${opts.faults ? `, ${Math.round(opts.faults * 100)}% model faults` : ""})`);
    const base = await runOnce("base", { kills: 0, trainerKill: false, restart: false });
    log(`baseline: ${base.calls.length} model calls, completed=${base.completed}`);
    totalCalls = base.calls.length;
    log(
      `chaos run (${opts.kills} kills${opts.trainerKill ? ", a trainer kill" : ""}${
        opts.serverRestart ? ", a dev-server restart" : ""
      })`,
    );
    const chaos = await runOnce("chaos", {
      kills: opts.kills,
      trainerKill: opts.trainerKill ?? false,
      restart: opts.serverRestart ?? false,
    });
    return report(base, chaos, iterations, started, log);
  } finally {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch { /* already exited */ }
    }
    await connection.close();
    await models.close();
    await server.stop();
    if (Deno.env.get("CM2_CHAOS_KEEP")) log(`kept ${tmp}`);
    else await fs.rm(tmp, { recursive: true, force: true });
  }
}

function report(
  base: RunFacts,
  chaos: RunFacts,
  iterations: number,
  started: number,
  log: (l: string) => void,
) {
  const rewardsMatch = base.episodes.size > 0 && base.episodes.size === chaos.episodes.size &&
    [...base.episodes].every(([k, v]) => chaos.episodes.get(k)?.reward === v.reward);
  if (!rewardsMatch) {
    const diffs = [...base.episodes].filter(([k, v]) => chaos.episodes.get(k)?.reward !== v.reward).slice(
      0,
      5,
    );
    log(
      `rewards differ (${base.episodes.size} vs ${chaos.episodes.size} episodes): ${
        JSON.stringify(diffs.map(([k, v]) => [k, v, chaos.episodes.get(k)]))
      }`,
    );
  }
  // A key sent again is a repeat, except the one retry each transient fault asks for.
  const faulted = new Set(chaos.injected.filter((f) => f.kind !== "invalid-arguments").map((f) => f.key));
  const seen = new Map<string, number>();
  for (const c of chaos.calls) {
    const key = c.headers["idempotency-key"];
    if (key) seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  const repeated = [...seen].reduce((n, [k, v]) => n + Math.max(0, v - 1 - (faulted.has(k) ? 1 : 0)), 0);
  const updates = Array.from(
    { length: iterations },
    (_, it) => chaos.commits.get(`${chaos.name}/${it}`) ?? 0,
  );
  const perIteration = [...new Set(updates)];
  const formatErrors = [...chaos.episodes.values()].filter((e) => e.endReason === "format-error").length;
  const silent =
    [...chaos.episodes.values()].filter((e) =>
      e.endReason !== null && (FAILURE_REASONS as readonly string[]).includes(e.endReason)
    ).length;
  return {
    iterations,
    kills: chaos.kills,
    trainer_kills: chaos.trainerKills,
    server_restarts: chaos.restarts,
    faults_injected: chaos.injected.length,
    faults_counted: chaos.modelFaults + formatErrors,
    completed: chaos.completed && base.completed,
    in_flight_at_kills: chaos.inFlight,
    repeated_calls: repeated,
    updates_per_iteration: perIteration.length === 1 ? perIteration[0]! : updates,
    rewards_match: rewardsMatch,
    silent_zero_rewards: silent,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
}

/** Whether a report passes (see the module doc). */
export function chaosPassed(r: ChaosReport): boolean {
  return r.completed && r.rewards_match && r.updates_per_iteration === 1 &&
    r.repeated_calls <= r.in_flight_at_kills && r.faults_counted === r.faults_injected &&
    r.silent_zero_rewards === 0;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      kills: { type: "string", default: "20" },
      iterations: { type: "string", default: "3" },
      faults: { type: "string", default: "0.2" },
      seed: { type: "string", default: "7" },
      "trainer-kill": { type: "boolean", default: true },
      "server-restart": { type: "boolean", default: true },
    },
  });
  const report = await runChaos({
    kills: Number(values.kills),
    iterations: Number(values.iterations),
    faults: Number(values.faults),
    seed: Number(values.seed),
    trainerKill: values["trainer-kill"],
    serverRestart: values["server-restart"],
  });
  console.log(JSON.stringify(report));
  Deno.exit(chaosPassed(report) ? 0 : 1);
}
