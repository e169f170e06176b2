/**
 * Orchestration overhead benchmark (`deno task bench:orchestration [--episodes 512] [--concurrency 64]
 * [--latency-ms 100]`).
 *
 * One iteration of `--episodes` rollouts (`--episodes / --group-size` tasks of the sample dataset,
 * records repeating), run twice against the same scripted model endpoint (TEST DOUBLE, its own child
 * process, a fixed latency per call):
 *
 * (a) through Temporal: `trainingRun` with one iteration on a private dev server, the real
 *     `worker.ts` as a child process (its VmRSS / VmHWM sampled from `/proc/<pid>/status`), the
 *     test-only trainer in this process;
 * (b) a plain in-process loop without Temporal: `runEpisode` (core/episode.ts) over
 *     `createChatModel` clients, the same episode options, judge settings and caches (group
 *     simulator cache, shared judge verdict cache), the same sliding window of episodes, then the
 *     same reward math.
 *
 * Progress goes to stderr; the last line on stdout is one JSON object:
 * `{"episodes","temporal_s","plain_s","ratio","worker_rss_mb","store_kib_per_policy_call","worker_cpu_ms_per_call",
 * "calls_temporal","calls_plain","latency_ms","concurrency"}` (store growth: every blob the run wrote, datasets
 * and config included, over the policy calls).
 *
 * Other options: `--group-size 8`, `--deviate-every 3` (0: the policy always follows the reference),
 * `--db FILE` (SQLite file for the dev server; default in memory), `--only temporal|plain`,
 * `--dev-server-arg ARG` (repeatable, extra flags of `temporal server start-dev`),
 * `--worker-arg ARG` (repeatable, passed to worker.ts), `--worker-deno-arg ARG` (repeatable, passed to
 * `deno run` of the worker, e.g. `--v8-flags=--prof`), `--analyze N` (episode histories to break
 * down on stderr, default 8; 0 skips).
 *
 * @module
 */
import { Client } from "@temporalio/client";
import { DefaultLogger, NativeConnection, Runtime, Worker } from "@temporalio/worker";
import { tsToMs } from "@temporalio/common/lib/time.js";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { roleModel, ROOT } from "../../config.ts";
import { parseRunConfig, type RunConfig } from "../../core/config.ts";
import type { EpisodeState } from "../../core/episode.ts";
import { episodeVerdicts } from "../../core/episode_judge.ts";
import { runEpisode } from "../../core/episode_loop.ts";
import { importFiles } from "../../core/importers/mod.ts";
import type { ChatModel } from "../../core/llm_types.ts";
import { computeAdvantages } from "../../core/rewards.ts";
import { workflowIds } from "../../core/names.ts";
import { sampleTasks } from "../../core/sampling.ts";
import { emptyCache, type SimulatorCache } from "../../core/simulator.ts";
import { sha256Hex } from "../../activities/common.ts";
import { episodeOptionsOf } from "../../core/episode_options.ts";
import { FsStore } from "../../store/fs_store.ts";
import { type DevServer, freePort, isListening, startDevServer } from "../../scripts/temporal_server.ts";
import { SEARCH_ATTRIBUTES } from "../../core/names.ts";
import { TEMPORAL_BIN } from "../../scripts/paths.ts";
import { iterationProgressQuery, trainingRun } from "../../workflows/training.ts";
import { smokeWorkflow } from "../../workflows/smoke.ts";
import { createTestTrainer } from "../test_trainer.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    episodes: { type: "string", default: "512" },
    "group-size": { type: "string", default: "8" },
    concurrency: { type: "string", default: "64" },
    "latency-ms": { type: "string", default: "100" },
    "deviate-every": { type: "string", default: "3" },
    db: { type: "string" },
    only: { type: "string" },
    analyze: { type: "string", default: "8" },
    "worker-arg": { type: "string", multiple: true, default: [] },
    "worker-deno-arg": { type: "string", multiple: true, default: [] },
    "dev-server-arg": { type: "string", multiple: true, default: [] },
  },
});

const episodes = Number(values.episodes);
const groupSize = Number(values["group-size"]);
const concurrency = Number(values.concurrency);
const latencyMs = Number(values["latency-ms"]);
if (!Number.isInteger(episodes / groupSize) || episodes <= 0) {
  throw new Error(`--episodes ${episodes} must be a positive multiple of --group-size ${groupSize}`);
}
const tasksPerIteration = episodes / groupSize;
const t0 = performance.now();
Runtime.install({ logger: new DefaultLogger("ERROR") });
const uniqueQueue = (prefix: string) => `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
const log = (line: string) =>
  console.error(`[bench ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

// ---------------------------------------------------------------------------------------------
// The model endpoint (child process)

interface ServerStats {
  calls: number;
  inFlight: number;
  byModel: Record<string, number>;
  repeatedKeys: number;
}

async function startModelServer() {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      path.join(ROOT, "tests/bench/model_server.ts"),
      "--latency-ms",
      String(latencyMs),
      "--deviate-every",
      values["deviate-every"],
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async (): Promise<string> => {
    while (!buffered.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("model server exited");
      buffered += value;
    }
    const nl = buffered.indexOf("\n");
    const line = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    return line;
  };
  const { url } = JSON.parse(await nextLine()) as { url: string };
  const writer = child.stdin.getWriter();
  let queue = Promise.resolve<unknown>(undefined);
  const stats = (): Promise<ServerStats> => {
    const p = queue.then(async () => {
      await writer.write(new TextEncoder().encode("stats\n"));
      return JSON.parse(await nextLine()) as ServerStats;
    });
    queue = p.catch(() => {});
    return p;
  };
  return {
    url,
    pid: child.pid,
    stats,
    async close() {
      await writer.close().catch(() => {});
      await child.status;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Shared config

function benchConfig(url: string, storeRoot: string, trainerQueue: string, name: string): RunConfig {
  const role = (model: string) => ({ baseURL: url, model, timeoutMs: 60_000 });
  const parsed = parseRunConfig({
    name,
    dataset: { path: "data/sample/tooltalk_sample.jsonl", heldOut: 0 },
    models: {
      policy: { ...role("policy-model"), adapterApi: "cm2" },
      judge: role("judge-model"),
      simulator: role("sim-model"),
      labeler: role("labeler-model"),
    },
    cm2: { iterations: 1, tasksPerIteration, groupSize, episodeConcurrency: concurrency },
    trainer: { taskQueue: trainerQueue },
    store: { url: storeRoot },
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
  return parsed.config;
}

/** VmRSS / VmHWM of a process in MiB, or null once it is gone. */
async function memoryOf(pid: number): Promise<{ rss: number; hwm: number } | null> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/status`);
    const kb = (key: string) => Number(text.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
    return { rss: kb("VmRSS") / 1024, hwm: kb("VmHWM") / 1024 };
  } catch {
    return null;
  }
}

/** CPU seconds (user + system) a process has used so far, or 0 once it is gone. */
async function cpuOf(pid: number): Promise<number> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// (a) Temporal

/**
 * The dev server as `scripts/temporal_server.ts` starts it, or, with `--dev-server-arg`, started here
 * with those extra flags (e.g. `--dynamic-config-value KEY=VALUE`) to try server settings.
 */
async function devServer(): Promise<DevServer> {
  const port = await freePort();
  const extra = values["dev-server-arg"];
  if (extra.length === 0) {
    return await startDevServer({ port, headless: true, dbFile: values.db ?? null, reuse: false });
  }
  const args = [
    "server",
    "start-dev",
    "--ip",
    "127.0.0.1",
    "--port",
    String(port),
    "--headless",
    "--log-level",
    "error",
  ];
  if (values.db) args.push("--db-filename", values.db);
  for (const [k, v] of Object.entries(SEARCH_ATTRIBUTES)) args.push("--search-attribute", `${k}=${v}`);
  const child = new Deno.Command(TEMPORAL_BIN, {
    args: [...args, ...extra],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  while (!(await isListening("127.0.0.1", port))) await sleep(200);
  await sleep(500);
  return {
    address: `127.0.0.1:${port}`,
    uiUrl: undefined,
    owned: true,
    child,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

async function runTemporal(modelUrl: string, stats: () => Promise<ServerStats>, modelPid: number) {
  const server = await devServer();
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-bench-"));
  const storeRoot = path.join(tmp, "store");
  const store = new FsStore(storeRoot);
  const taskQueue = uniqueQueue("bench-orch");
  const trainerQueue = uniqueQueue("bench-trainer");
  const name = `bench-${crypto.randomUUID().slice(0, 6)}`;
  const config = benchConfig(modelUrl, storeRoot, trainerQueue, name);
  const connection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection });
  const nc = await NativeConnection.connect({ address: server.address });
  const trainer = createTestTrainer(store);
  const trainerWorker = await Worker.create({
    connection: nc,
    taskQueue: trainerQueue,
    activities: trainer.activities,
  });
  const trainerRunning = trainerWorker.run();
  const worker = spawnWorker(server.address, taskQueue, storeRoot, {
    denoArgs: values["worker-deno-arg"],
    workerArgs: values["worker-arg"],
  });
  let peakRss = 0;
  let hwm = 0;
  const sample = async () => {
    const m = await memoryOf(worker.pid);
    if (m) {
      peakRss = Math.max(peakRss, m.rss);
      hwm = Math.max(hwm, m.hwm);
    }
    return m;
  };
  const sampler = setInterval(sample, 250);
  try {
    // Warm-up: the worker bundles the workflow code at start; wait until it runs a workflow.
    const warm = performance.now();
    await client.workflow.execute(smokeWorkflow, {
      taskQueue,
      workflowId: `bench/warmup/${name}`,
      args: [{ name: "bench" }],
    });
    const startRss = (await sample())?.rss ?? 0;
    log(
      `temporal: dev server pid ${server.child?.pid}, worker pid ${worker.pid} ready in ${
        round((performance.now() - warm) / 1000, 1)
      } s, RSS ${round(startRss, 0)} MiB`,
    );
    const before = await stats();
    const cpu0 = await Promise.all([worker.pid, server.child?.pid ?? 0, modelPid, Deno.pid].map(cpuOf));
    const started = performance.now();
    const handle = await client.workflow.start(trainingRun, {
      taskQueue,
      workflowId: workflowIds.run(name),
      args: [{ config }],
    });
    let finished = false;
    const done = handle.result().finally(() => (finished = true));
    const progress = (async () => {
      const it = client.workflow.getHandle(workflowIds.iteration(name, 0));
      while (!finished) {
        await Promise.race([done.catch(() => {}), sleep(5_000)]);
        if (finished) break;
        const [p, s, m] = await Promise.all([
          it.query(iterationProgressQuery).catch(() => null),
          stats(),
          sample(),
        ]);
        log(
          `temporal: ${p ? `${p.phase} ${p.episodesDone}/${p.episodesTotal} episodes` : "preparing"}, ` +
            `${s.calls - before.calls} model calls (${s.inFlight} in flight), worker RSS ${
              round(m?.rss ?? 0, 0)
            } MiB`,
        );
      }
    })();
    const result = await done;
    const seconds = (performance.now() - started) / 1000;
    await progress;
    const after = await stats();
    const cpu1 = await Promise.all([worker.pid, server.child?.pid ?? 0, modelPid, Deno.pid].map(cpuOf));
    const cpu = cpu1.map((c, i) => round(c - cpu0[i]!, 1));
    log(
      `temporal: CPU seconds: worker ${cpu[0]}, dev server ${cpu[1]}, model server ${cpu[2]}, bench ${
        cpu[3]
      }`,
    );
    await sample();
    const storeBytes = await objectBytes(storeRoot);
    const summary = result.recent.at(-1);
    log(
      `temporal: done in ${round(seconds)} s (iteration ${round(summary?.seconds ?? 0)} s), ` +
        `${summary?.episodes} episodes, ${summary?.failed} failed, reward ${
          round(summary?.meanReward ?? 0, 3)
        }, ` +
        `${after.calls - before.calls} model calls ${JSON.stringify(diff(after.byModel, before.byModel))}, ` +
        `${after.repeatedKeys - before.repeatedKeys} repeated keys`,
    );
    log(`temporal: worker RSS peak ${round(peakRss, 0)} MiB sampled, VmHWM ${round(hwm, 0)} MiB`);
    await analyze(client, name, Number(values.analyze));
    const serverMem = server.child ? await memoryOf(server.child.pid) : null;
    if (serverMem) log(`temporal: dev server VmHWM ${round(serverMem.hwm, 0)} MiB`);
    const policyCalls = (after.byModel["policy-model"] ?? 0) - (before.byModel["policy-model"] ?? 0);
    log(
      `temporal: store ${round(storeBytes / 2 ** 20, 1)} MiB of blobs written, ${
        round(storeBytes / Math.max(1, policyCalls) / 1024, 2)
      } KiB per policy call; worker ${
        round((cpu[0]! * 1000) / Math.max(1, after.calls - before.calls), 2)
      } ms CPU per model call`,
    );
    return {
      seconds,
      calls: after.calls - before.calls,
      storeKbPerPolicyCall: storeBytes / Math.max(1, policyCalls) / 1024,
      workerCpuMsPerCall: (cpu[0]! * 1000) / Math.max(1, after.calls - before.calls),
      rssMb: Math.max(hwm, peakRss),
      startRssMb: startRss,
      meanReward: summary?.meanReward ?? 0,
      failed: summary?.failed ?? 0,
    };
  } finally {
    clearInterval(sampler);
    try {
      worker.kill("SIGTERM");
    } catch { /* gone */ }
    await worker.status;
    trainerWorker.shutdown();
    await trainerRunning;
    await nc.close();
    await connection.close();
    await server.stop();
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** Bytes of every blob in a file store (`objects/`), the store's growth over a fresh run. */
async function objectBytes(root: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else total += (await fs.stat(p)).size;
    }
  };
  await walk(path.join(root, "objects"));
  return total;
}

/**
 * Where an episode's time goes, from the histories of `n` episodes spread over the iteration:
 * per activity type the queue time (scheduled → started) and run time (started → closed), and per
 * workflow task the same. Printed on stderr.
 */
async function analyze(client: Client, name: string, n: number): Promise<void> {
  if (n <= 0) return;
  type Agg = { count: number; queue: number; run: number };
  const acts = new Map<string, Agg>();
  const wft: Agg = { count: 0, queue: 0, run: 0 };
  let total = 0;
  let gapAfterActivity = 0;
  let gaps = 0;
  const picks = Array.from({ length: n }, (_, i) => Math.floor((i * tasksPerIteration) / n));
  for (const [i, k] of picks.entries()) {
    const id = workflowIds.episode(name, 0, k, i % groupSize);
    const history = await client.workflow.getHandle(id).fetchHistory();
    const events = history.events ?? [];
    const at = (e: (typeof events)[number]) => tsToMs(e.eventTime);
    const byId = new Map(events.map((e) => [Number(e.eventId), e]));
    total += at(events.at(-1)!) - at(events[0]!);
    let lastActivityClose: number | undefined;
    for (const e of events) {
      const started = e.activityTaskStartedEventAttributes;
      if (started) {
        const sched = byId.get(Number(started.scheduledEventId))!;
        const type = sched.activityTaskScheduledEventAttributes!.activityType!.name!;
        const a = acts.get(type) ?? { count: 0, queue: 0, run: 0 };
        a.count++;
        a.queue += at(e) - at(sched);
        acts.set(type, a);
      }
      const closed = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
      if (closed) {
        const started = byId.get(Number(closed.startedEventId))!;
        const sched = byId.get(Number(closed.scheduledEventId))!;
        acts.get(sched.activityTaskScheduledEventAttributes!.activityType!.name!)!.run += at(e) - at(started);
        lastActivityClose = at(e);
      }
      const wfStarted = e.workflowTaskStartedEventAttributes;
      if (wfStarted) {
        wft.count++;
        wft.queue += at(e) - at(byId.get(Number(wfStarted.scheduledEventId))!);
      }
      const wfDone = e.workflowTaskCompletedEventAttributes;
      if (wfDone) {
        wft.run += at(e) - at(byId.get(Number(wfDone.startedEventId))!);
        if (lastActivityClose !== undefined) {
          gapAfterActivity += at(e) - lastActivityClose;
          gaps++;
          lastActivityClose = undefined;
        }
      }
    }
  }
  const ms = (x: number, c: number) => `${Math.round(x / Math.max(1, c))} ms`;
  log(`analysis of ${n} episode histories: mean episode ${ms(total, n)}`);
  for (const [type, a] of [...acts].sort((x, y) => y[1].count - x[1].count)) {
    log(
      `  ${type.padEnd(14)} ${(a.count / n).toFixed(1)}/episode  queue ${ms(a.queue, a.count)}  run ${
        ms(a.run, a.count)
      }`,
    );
  }
  log(
    `  workflow task  ${(wft.count / n).toFixed(1)}/episode  queue ${ms(wft.queue, wft.count)}  run ${
      ms(wft.run, wft.count)
    }`,
  );
  log(`  activity closed -> next workflow task completed: ${ms(gapAfterActivity, gaps)}`);
}

function diff(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]));
}

// ---------------------------------------------------------------------------------------------
// (b) Plain loop

/** The workflow's idempotency key of a policy call (`<episode id>/policy/<step>`), so the policy deviates alike. */
function keyedPolicy(model: ChatModel, episodeId: string): ChatModel {
  return {
    ...model,
    complete: (req) =>
      model.complete({
        ...req,
        idempotencyKey: `${episodeId}/policy/${req.messages.filter((m) => m.role === "assistant").length}`,
      }),
  };
}

async function runPlain(modelUrl: string, stats: () => Promise<ServerStats>, modelPid: number) {
  const name = `plain-${crypto.randomUUID().slice(0, 6)}`;
  const config = benchConfig(modelUrl, "/nonexistent", "none", name);
  const report = await importFiles(
    [path.join(ROOT, config.dataset.path)],
    (p) => fs.readFile(p, "utf8"),
  );
  const records = report.records.filter((r) => r.checklists.length > 0);
  const trainCount = records.length - Math.min(config.dataset.heldOut, Math.max(0, records.length - 1));
  const tasks = sampleTasks(config.cm2.seed, 0, trainCount, tasksPerIteration);
  const policy = roleModel("policy", config.models.policy);
  const judge = roleModel("judge", config.models.judge);
  const simulator = roleModel("simulator", config.models.simulator);
  const options = episodeOptionsOf(config);
  const judgeCache: Record<string, boolean[]> = {};
  const groupCaches = tasks.map((): SimulatorCache => emptyCache());
  const jobs = tasks.flatMap((recordIndex, k) =>
    Array.from({ length: groupSize }, (_, g) => ({ recordIndex, k, g }))
  );
  const states: EpisodeState[][] = tasks.map(() => []);
  const before = await stats();
  const cpu0 = await Promise.all([modelPid, Deno.pid].map(cpuOf));
  const started = performance.now();
  let done = 0;
  let next = 0;
  const ticker = setInterval(async () => {
    const s = await stats();
    log(
      `plain: ${done}/${jobs.length} episodes, ${
        s.calls - before.calls
      } model calls (${s.inFlight} in flight)`,
    );
  }, 5_000);
  const lane = async () => {
    while (next < jobs.length) {
      const job = jobs[next++]!;
      const episodeId = workflowIds.episode(name, 0, job.k, job.g);
      const r = await runEpisode(records[job.recordIndex]!, {
        policy: keyedPolicy(policy, episodeId),
        judge,
        simulator,
      }, {
        ...options,
        hash: sha256Hex,
        judgeConcurrency: config.models.judge.concurrency,
        judgeCache,
        cache: groupCaches[job.k]!,
      });
      groupCaches[job.k] = { entries: { ...groupCaches[job.k]!.entries, ...r.cache.entries } };
      states[job.k]![job.g] = r.state;
      done++;
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, lane));
  } finally {
    clearInterval(ticker);
  }
  // The same reward math the computeRewards activity does (no store, no batch file).
  const c = config.cm2;
  let rewardSum = 0;
  let rewardCount = 0;
  let failed = 0;
  for (const group of states) {
    const verdicts = group.map((s) => episodeVerdicts(s));
    const adv = computeAdvantages({ checklist: group[0]!.record.checklists[0]!, episodes: verdicts }, {
      preset: c.preset,
      level: c.advantageLevel,
      fnorm: c.fnorm,
      failedEpisodes: c.failedEpisodes,
      minGroupSupport: c.minGroupSupport,
      eta: c.eta,
    });
    verdicts.forEach((v, e) => {
      if (v.ok) {
        rewardSum += adv.episodes[e]!.reward;
        rewardCount++;
      } else failed++;
    });
  }
  const seconds = (performance.now() - started) / 1000;
  const after = await stats();
  const cpu = (await Promise.all([modelPid, Deno.pid].map(cpuOf))).map((c, i) => round(c - cpu0[i]!, 1));
  log(`plain: CPU seconds: model server ${cpu[0]}, bench ${cpu[1]}`);
  const meanReward = rewardCount > 0 ? rewardSum / rewardCount : 0;
  log(
    `plain: done in ${round(seconds)} s, ${jobs.length} episodes, ${failed} failed, reward ${
      round(meanReward, 3)
    }, ` +
      `${after.calls - before.calls} model calls ${JSON.stringify(diff(after.byModel, before.byModel))}, ` +
      `bench process RSS ${round(Deno.memoryUsage().rss / 2 ** 20, 0)} MiB`,
  );
  return { seconds, calls: after.calls - before.calls, meanReward, failed };
}

// ---------------------------------------------------------------------------------------------

const models = await startModelServer();
log(
  `${episodes} episodes (${tasksPerIteration} tasks x ${groupSize}), concurrency ${concurrency}, ` +
    `latency ${latencyMs} ms, dev server ${values.db ? `SQLite ${values.db}` : "in memory"}, ` +
    `${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}`,
);
let temporal: Awaited<ReturnType<typeof runTemporal>> | undefined;
let plain: Awaited<ReturnType<typeof runPlain>> | undefined;
try {
  if (values.only !== "plain") temporal = await runTemporal(models.url, models.stats, models.pid);
  if (values.only !== "temporal") plain = await runPlain(models.url, models.stats, models.pid);
} finally {
  await models.close();
}
if (temporal && plain && Math.abs(temporal.meanReward - plain.meanReward) > 1e-9) {
  log(`note: mean rewards differ (temporal ${temporal.meanReward}, plain ${plain.meanReward})`);
}
console.log(JSON.stringify({
  episodes,
  temporal_s: temporal ? round(temporal.seconds) : null,
  plain_s: plain ? round(plain.seconds) : null,
  ratio: temporal && plain ? round(temporal.seconds / plain.seconds, 3) : null,
  worker_rss_mb: temporal ? round(temporal.rssMb, 1) : null,
  store_kib_per_policy_call: temporal ? round(temporal.storeKbPerPolicyCall, 2) : null,
  worker_cpu_ms_per_call: temporal ? round(temporal.workerCpuMsPerCall, 2) : null,
  calls_temporal: temporal?.calls ?? null,
  calls_plain: plain?.calls ?? null,
  latency_ms: latencyMs,
  concurrency,
}));
Deno.exit(0);
