/**
 * `deno task start`: the main job. A real CM2 training run on the embedded default, no API key:
 *
 * 1. installs what is missing (`setup`);
 * 2. starts (or reuses) the Temporal dev server: SQLite under `.cm2/`, Web UI on :8233;
 * 3. starts the embedded model servers: judge + simulator + labeler (llama.cpp through
 *    `serve/llama_server.ts`, JSON-schema grammars) and the policy server (base model + latest LoRA
 *    adapter, `trainer/cm2_trainer/serve.py`);
 * 4. starts the trainer worker (Python) and the orchestrator worker (`worker.ts`);
 * 5. runs a small training run (`recipes/demo.json`: 3 iterations × 1 task × group 4 on the sample dataset),
 *    printing one line per iteration;
 * 6. prints where checkpoints and metrics are, the peak memory of the whole stack, and stops every
 *    process it started (`--keep` leaves the stack up).
 *
 * Flags: `--config FILE` (default: `recipes/demo.json`, the embedded demo), `--keep`, `--serve` (start the stack
 * and run nothing: for `cm2 eval` or runs started by hand), `--iterations N`,
 * `--pipeline RECIPE` (run a pipeline recipe, e.g. `recipes/pipeline-sample.json`, instead of a training run),
 * `--name NAME` (the pipeline's name; default: the recipe's name and a time stamp).
 *
 * @module
 */
import { Client } from "@temporalio/client";
import { NativeConnection } from "@temporalio/worker";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { configSummary, type RunConfig } from "../core/config.ts";
import { storeNames, workflowIds } from "../core/names.ts";
import { loadRunConfig } from "../config.ts";
import { canonicalStoreUrl, openStore } from "../store/open.ts";
import { type ArtifactStore, getJson } from "../store/mod.ts";
import { startRun } from "../cli/run.ts";
import { statusQuery, type TrainingRunResult } from "../workflows/training.ts";
import { formatSummary } from "../cli/run.ts";
import { promptVersionsOf, watchPipeline } from "../cli/pipeline.ts";
import { parsePipelineRecipe, type PipelineRecipe } from "../core/pipeline.ts";
import { pipelineRun } from "../workflows/pipeline.ts";
import { CM2_DIR, GGUF_PATH, PYTHON, ROOT } from "./paths.ts";
import { ensureLlamaServer } from "./llama_server_build.ts";
import { formatFindings, runDoctor } from "./doctor.ts";
import { describeExit, tailFile } from "./proc.ts";
import { setup } from "./setup.ts";
import { workerArgs } from "./worker_process.ts";
import { type DevServer, isListening, startDevServer, TEMPORAL_UI_PORT } from "./temporal_server.ts";
import { startUiServer, UI_PORT, type UiServer } from "../ui/server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    config: { type: "string" },
    keep: { type: "boolean", default: false },
    serve: { type: "boolean", default: false },
    iterations: { type: "string" },
    pipeline: { type: "string" },
    name: { type: "string" },
  },
});

const LOG_DIR = path.join(ROOT, ".cm2", "logs");
const children: { name: string; proc: Deno.ChildProcess }[] = [];
let devServer: DevServer | undefined;
let uiServer: UiServer | undefined;
let stopping = false;
/** Children whose start `waitHttp` is watching: it reports their death itself. */
const awaited = new Set<string>();

function log(line: string): void {
  console.log(`[cm2] ${line}`);
}

async function spawn(
  name: string,
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<void> {
  // The model servers' start is awaited by `waitHttp`, which reports a death during it itself.
  if (name === "llama-server" || name === "policy-server") awaited.add(name);
  await fs.mkdir(LOG_DIR, { recursive: true });
  const logFile = path.join(LOG_DIR, `${name}.log`);
  // The shell redirects straight into the log and then becomes the program (`exec`), so signals
  // reach it and no pipe between us can fill up and block it.
  const proc = new Deno.Command("sh", {
    args: ["-c", 'exec "$@" >"$0" 2>&1', logFile, cmd, ...args],
    cwd: ROOT,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  children.push({ name, proc });
  // A child that dies while the stack should be up says how, with the end of its log.
  proc.status.then(async (status) => {
    if (stopping || awaited.has(name)) return;
    log(`${name} stopped unexpectedly (${describeExit(status)}); ${await logTail(name)}`);
  });
}

/** "last lines of <its log>:" and those lines, for a message about a child. */
async function logTail(name: string): Promise<string> {
  const file = path.join(LOG_DIR, `${name}.log`);
  return `last lines of ${file}:\n${await tailFile(file, 15)}`;
}

/** Waits until a model server answers `url`; a death or a time-out on the way is an error saying how. */
async function waitHttp(name: string, url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const child = children.find((c) => c.name === name)!;
  try {
    while (Date.now() < deadline) {
      const status = await Promise.race([
        child.proc.status,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 10)),
      ]);
      if (status) {
        throw new Error(`${name} died during start (${describeExit(status)}); ${await logTail(name)}`);
      }
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
        await res.body?.cancel();
        if (res.ok) return;
      } catch { /* not up yet */ }
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`${name} did not answer ${url} in ${timeoutMs / 1000} s; ${await logTail(name)}`);
  } finally {
    awaited.delete(name);
  }
}

/**
 * Memory of a process and all its descendants, in bytes (Linux /proc): the proportional set size
 * (shared pages split between the processes that map them), so torch's libraries in two Python
 * processes are not counted twice; RSS where PSS is unavailable.
 */
async function treeRss(pid: number): Promise<number> {
  let total = 0;
  try {
    const rollup = await Deno.readTextFile(`/proc/${pid}/smaps_rollup`).catch(() => "");
    const pss = rollup.match(/^Pss:\s+(\d+) kB/m);
    const m = pss ?? (await Deno.readTextFile(`/proc/${pid}/status`)).match(/VmRSS:\s+(\d+) kB/);
    if (m) total += Number(m[1]) * 1024;
    for await (const t of Deno.readDir(`/proc/${pid}/task`)) {
      const kids = (await Deno.readTextFile(`/proc/${pid}/task/${t.name}/children`).catch(() => "")).trim();
      for (const k of kids ? kids.split(/\s+/) : []) total += await treeRss(Number(k));
    }
  } catch { /* exited */ }
  return total;
}

async function stopAll(): Promise<void> {
  stopping = true;
  for (const c of [...children].reverse()) {
    try {
      c.proc.kill("SIGTERM");
    } catch { /* gone */ }
  }
  await Promise.all(children.map(async (c) => {
    const t = setTimeout(() => {
      try {
        c.proc.kill("SIGKILL");
      } catch { /* gone */ }
    }, 15_000);
    await c.proc.status;
    clearTimeout(t);
  }));
}

/**
 * Threads per llama-server. The judge/simulator server and the policy server decode at the same time; with
 * more threads than cores between them ggml's spinning threads starve each other. Measured on 2 cores, two
 * servers each generating two streams: `-t 1` each ~7.5-20 tokens/s per stream; `-t 2` each took over 100 s
 * for the same work; `-t 2 --poll 0` 3.7-6.4 tokens/s.
 */
const LLAMA_THREADS = Math.max(1, Math.floor((navigator.hardwareConcurrency || 2) / 2));

/**
 * The embedded demo's run config (`recipes/demo.json`), scaled for 2 CPU cores. The policy (llama-server, one
 * thread, one slot per rollout of a group) reads ~75-100 prompt tokens/s and writes ~3 tokens/s per stream at
 * the sample's ~3k-token tool prompts, and the judge/simulator share another one-thread llama-server, so the
 * demo keeps episodes short (1 user turn, 4 assistant steps, 160-token policy steps), runs a group's 4
 * rollouts at once, and judges up to 4 items per call. One update on 2 cores reads every sample's ~3k tokens
 * about four times (reference pass, forward, recomputation, backward): ~1 min per sample, so one task (G = 4
 * samples) per iteration keeps the demo near 20 minutes. Policy requests can queue behind other rollouts' steps,
 * so their timeout is long. A config file passed with `--config` is used instead.
 */
const DEMO_RECIPE = path.join(ROOT, "recipes", "demo.json");

const gib = (b: number) => (b / 2 ** 30).toFixed(2);

/** Demo runs left running by an interrupted `task start` would resume on these workers and compete with this
 * run for the CPU: stop them (their checkpoints stay in the store). */
async function stopStaleDemoRuns(client: Client): Promise<void> {
  const stale: string[] = [];
  for await (
    const w of client.workflow.list({ query: `WorkflowType="trainingRun" AND ExecutionStatus="Running"` })
  ) {
    if (w.workflowId.startsWith(workflowIds.run("demo-"))) stale.push(w.workflowId);
  }
  for (const wid of stale) {
    await client.workflow.getHandle(wid).terminate("superseded by a new `task start` demo run");
  }
  if (stale.length) log(`stopped ${stale.length} earlier demo run(s) left running: ${stale.join(", ")}`);
}

/** The end of a run: iterations, checkpoints, the served version, where things are. */
async function report(
  config: RunConfig,
  store: ArtifactStore,
  result: TrainingRunResult,
  seconds: number,
): Promise<{ checkpoints: number; served: { version: number } }> {
  const checkpoints = await store.listNames(storeNames.checkpoints(config.name));
  const served = await fetch(`${config.models.policy.baseURL.replace(/\/$/, "")}/policy_version`)
    .then((r) => r.json() as Promise<{ version: number }>)
    .catch(() => ({ version: NaN }));
  log(
    `done in ${seconds.toFixed(0)} s: ${result.iterations} iterations, ` +
      `${checkpoints.length} checkpoints, policy v${result.policyVersion} (served: v${served.version})`,
  );
  if (result.checkpoint) {
    const manifest: { files?: Record<string, unknown> } = await getJson<{ files?: Record<string, unknown> }>(
      store,
      result.checkpoint,
    ).catch(() => ({}));
    log(
      `last checkpoint: ${store.locate(result.checkpoint)} (${Object.keys(manifest.files ?? {}).join(", ")})`,
    );
  }
  log(`checkpoints: ${store.url} names ${storeNames.checkpoints(config.name)}it-<n>`);
  log(`metrics:     ${store.url} names ${storeNames.metrics(config.name, "it", 0).replace(/0$/, "<n>")}`);
  log(
    `view it:     deno task cm2 ui (then /runs/${config.name}), or ` +
      `deno task cm2 report ${config.name} --out ${config.name}.html`,
  );
  return { checkpoints: checkpoints.length, served };
}

/**
 * The model servers this config needs on this machine (the embedded judge's llama-server on :8766, the
 * policy server on :8765, each only where the config points there and nothing listens yet), the trainer
 * worker and the orchestrator worker; returns once the model servers answer.
 */
async function startServices(
  config: RunConfig,
  storeUrl: string,
  env: Record<string, string>,
): Promise<void> {
  const deno = Deno.execPath();

  const judgeUrl = new URL(config.models.judge.baseURL);
  const policyUrl = new URL(config.models.policy.baseURL);
  const embeddedJudge = judgeUrl.hostname === "127.0.0.1" && judgeUrl.port === "8766";
  const embeddedPolicy = policyUrl.hostname === "127.0.0.1" && policyUrl.port === "8765";
  const llamaServer = (embeddedJudge || embeddedPolicy) ? await ensureLlamaServer(log) : undefined;
  if (embeddedJudge && !(await isListening("127.0.0.1", 8766))) {
    if (llamaServer) {
      await spawn("llama-server", llamaServer, [
        "-m",
        GGUF_PATH,
        "--host",
        "127.0.0.1",
        "--port",
        "8766",
        "--alias",
        config.models.judge.model,
        "-c",
        "16384",
        "-np",
        "2",
        "-t",
        String(LLAMA_THREADS),
        "--cache-ram",
        "256",
        "--no-webui",
      ]);
    } else {
      await spawn("llama-server", deno, [
        "run",
        "--allow-read",
        "--allow-env",
        "--allow-net=127.0.0.1",
        "--allow-ffi",
        "--allow-sys",
        "serve/llama_server.ts",
        "--model",
        GGUF_PATH,
        "--port",
        "8766",
        "--alias",
        config.models.judge.model,
        "--ctx",
        "8192",
        "--threads",
        "1",
        "--json-max-string",
        "200",
      ]);
    }
  }
  if (embeddedPolicy && !(await isListening("127.0.0.1", 8765))) {
    await spawn("policy-server", PYTHON, [
      "-m",
      "cm2_trainer.serve",
      "--model",
      GGUF_PATH,
      "--port",
      "8765",
      "--store",
      storeUrl,
      "--served-model-name",
      config.models.policy.model,
      // llama.cpp engine (when built): one slot per rollout of a group, batched decode
      "--parallel",
      String(config.cm2.episodeConcurrency),
      "--threads",
      String(LLAMA_THREADS),
      "--max-context",
      // `--serve` (evaluations): the model's whole context, since benchmark prompts are longer than the run's
      String(
        values.serve ? 8192 : Math.min(
          8192,
          config.cm2.limits.maxContextTokens + (config.models.policy.sampling.max_tokens ?? 512),
        ),
      ),
    ], {
      PYTHONPATH: path.join(ROOT, "trainer"),
      CM2_LOG_DIR: path.join(CM2_DIR, "logs"),
      ...(llamaServer ? { CM2_LLAMA_SERVER: llamaServer } : {}),
    });
  }
  await spawn("trainer-worker", PYTHON, [
    "-m",
    "cm2_trainer.worker",
    "--store",
    storeUrl,
    "--task-queue",
    config.trainer.taskQueue,
    // CPU: recompute each layer's activations in the backward pass instead of holding all of them
    "--gradient-checkpointing",
  ], {
    ...env,
    PYTHONPATH: path.join(ROOT, "trainer"),
  });
  await spawn("orchestrator-worker", deno, workerArgs(config.temporal.taskQueue, storeUrl), env);
  if (embeddedJudge) await waitHttp("llama-server", "http://127.0.0.1:8766/health", 120_000);
  if (embeddedPolicy) await waitHttp("policy-server", "http://127.0.0.1:8765/health", 180_000);
}

async function main(): Promise<number> {
  const t0 = performance.now();
  await setup();
  const recipe = values.pipeline ? await loadRecipe(values.pipeline) : undefined;
  let config: RunConfig = await loadRunConfig(values.config ?? recipe?.config ?? DEMO_RECIPE);
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15).toLowerCase();
  config = {
    ...config,
    name: values.config ? config.name : `demo-${stamp}`,
    cm2: { ...config.cm2, ...(values.iterations ? { iterations: Number(values.iterations) } : {}) },
    store: { url: canonicalStoreUrl(config.store.url, ROOT) },
  };
  const store = openStore(config.store.url, ROOT);
  const storeUrl = store.url;

  // The Web UI shows payloads through cm2's codec endpoint (the content behind a store ref), served from here.
  // It also serves the run viewer (`cm2 ui`); a reused dev server keeps the codec endpoint it was started with.
  const ui = startUiServer({
    store,
    port: UI_PORT,
    anyPortIfTaken: true,
    temporalUiPort: TEMPORAL_UI_PORT,
    temporal: { client: null, uiUrl: `http://127.0.0.1:${TEMPORAL_UI_PORT}`, namespace: "default" },
  });
  uiServer = ui;
  const server = await startDevServer({ log: () => {}, codecEndpoint: ui.codecEndpoint });
  devServer = server;
  log(
    `Temporal ${server.owned ? "started" : "reused"} at ${server.address}; Web UI ${server.uiUrl}` +
      (server.owned ? ` (payloads shown through ${ui.codecEndpoint})` : "") + `; run viewer ${ui.url}/`,
  );
  const env = { TEMPORAL_ADDRESS: server.address };
  await startServices(config, storeUrl, env);
  log(`model servers up; logs in .cm2/logs/ (${((performance.now() - t0) / 1000).toFixed(0)} s so far)`);

  let peak = 0;
  const peakOf = new Map<string, number>(); // per process tree, for the breakdown
  const sample = async () => {
    // Everything we started (dev server, model servers, workers) is a descendant of this process.
    peak = Math.max(peak, await treeRss(Deno.pid));
    for (const c of children) {
      peakOf.set(c.name, Math.max(peakOf.get(c.name) ?? 0, await treeRss(c.proc.pid)));
    }
  };
  const sampler = setInterval(sample, 1_000);

  const connection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection });
  ui.setTemporal(client);
  if (values.serve) {
    // The stack alone (`cm2 eval --base`, `--run R --checkpoint it-N`, `cm2 run start` use it), up until Ctrl-C.
    clearInterval(sampler);
    log(
      `stack up (policy server ${config.models.policy.baseURL}, workers on ${config.temporal.taskQueue}, cm2-eval)`,
    );
    log("evaluate with: deno task cm2 eval --base --bench bfcl --limit 20 (Ctrl-C stops the stack)");
    await connection.close();
    return 0;
  }
  if (recipe) {
    const code = await runPipeline(
      client,
      { ...recipe, name: values.name ?? `${recipe.name}-${stamp}` },
      config,
      server.uiUrl,
    );
    clearInterval(sampler);
    await sample();
    log(
      `peak memory of the whole stack (PSS): ${gib(peak)} GiB; done in ${
        ((performance.now() - t0) / 1000).toFixed(0)
      } s`,
    );
    await connection.close();
    return code;
  }
  const id = workflowIds.run(config.name);
  log(`run ${id}: ${configSummary(config)}`);
  log(
    `Web UI: ${server.uiUrl ?? "http://127.0.0.1:8233"}/namespaces/default/workflows/${
      encodeURIComponent(id)
    } · run viewer: ${ui.url}/runs/${encodeURIComponent(config.name)}`,
  );
  if (!values.config) await stopStaleDemoRuns(client);
  const handle = await startRun(client, config);
  demoRun = values.config ? undefined : handle;
  let printed = 0;
  const done = handle.result();
  let finished = false;
  done.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    const s = await handle.query(statusQuery).catch(() => undefined);
    while (s && printed < s.recent.length) log(formatSummary(s.recent[printed++]!));
    await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 2_000))]);
  }
  const result = await done;
  while (printed < result.recent.length) log(formatSummary(result.recent[printed++]!));
  clearInterval(sampler);
  await sample();

  const { checkpoints, served } = await report(config, store, result, (performance.now() - t0) / 1000);
  log(
    `peak memory of the whole stack (PSS): ${gib(peak)} GiB; per process, each at its own peak: ` +
      [...peakOf].map(([n, b]) => `${n} ${gib(b)}`).join(", "),
  );
  await connection.close();
  const ok = result.iterations === config.cm2.iterations && checkpoints === config.cm2.iterations &&
    served.version === result.policyVersion;
  if (!ok) log("warning: the run did not produce one checkpoint per iteration with the last one served");
  return ok ? 0 : 1;
}

/** Reads and checks a pipeline recipe, or throws naming every problem. */
async function loadRecipe(file: string): Promise<PipelineRecipe> {
  const parsed = parsePipelineRecipe(JSON.parse(await Deno.readTextFile(file)));
  if (!parsed.ok) throw new Error(`${file} is not a valid recipe:\n  ${parsed.issues.join("\n  ")}`);
  return parsed.recipe;
}

/** `--pipeline`: runs a recipe on the started stack, a line per finished stage. */
async function runPipeline(
  client: Client,
  recipe: PipelineRecipe,
  config: RunConfig,
  uiUrl: string | undefined,
): Promise<number> {
  const id = workflowIds.pipeline(recipe.name);
  log(`pipeline ${id}: ${recipe.stages.map((s) => s.stage).join(" → ")}`);
  log(`Web UI: ${uiUrl ?? "http://127.0.0.1:8233"}/namespaces/default/workflows/${encodeURIComponent(id)}`);
  const handle = await client.workflow.start(pipelineRun, {
    taskQueue: config.temporal.taskQueue,
    workflowId: id,
    args: [{
      recipe,
      config: { ...config, name: recipe.name },
      promptVersions: promptVersionsOf(recipe, config),
    }],
  });
  demoRun = handle;
  const t0 = performance.now();
  await watchPipeline(
    client,
    handle,
    (line) => log(`${line} (${((performance.now() - t0) / 1000).toFixed(0)} s)`),
  );
  return 0;
}

// Ctrl-C or SIGTERM: stop everything this process started, then exit. A run from `--config` stays in
// Temporal and resumes when workers run again (`deno task worker`, `cm2 run status`); the demo run is
// terminated with the stack (a later `task start` starts a new one).
let interrupted = false;
let demoRun: { terminate(reason?: string): Promise<unknown> } | undefined;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(sig, async () => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: stopping the stack`);
    if (demoRun && !values.keep) {
      await demoRun.terminate(`task start got ${sig}`).catch(() => {});
    }
    await stopAll();
    await devServer?.stop();
    await uiServer?.stop();
    Deno.exit(130);
  });
}

/** After a failed start: `cm2 doctor`'s findings that need attention, each with its fix. */
async function diagnose(): Promise<void> {
  try {
    const config = await loadRunConfig(values.config ?? DEMO_RECIPE);
    const findings = await runDoctor({ config, temporalAddress: devServer?.address ?? "127.0.0.1:7233" });
    const problems = formatFindings(findings, true);
    console.error(
      problems ? `[cm2] cm2 doctor found:\n${problems}` : "[cm2] cm2 doctor found nothing else wrong",
    );
  } catch (err) {
    console.error(`[cm2] cm2 doctor could not run: ${(err as Error).message}`);
  }
}

let code = 1;
try {
  code = await main();
} catch (err) {
  if (!interrupted) {
    console.error(`[cm2] error: ${(err as Error).message}`);
    await diagnose();
  }
} finally {
  if (interrupted) {
    await new Promise(() => {}); // the signal handler stops the stack and exits 130
  } else if (values.keep || values.serve) {
    log(`${values.serve ? "--serve" : "--keep"}: leaving the stack up (Ctrl-C stops it)`);
    await Promise.all(children.map((c) => c.proc.status));
  } else {
    await stopAll();
    await devServer?.stop();
    await uiServer?.stop();
  }
}
Deno.exit(code);
