/**
 * `cm2 eval`: a policy on public benchmarks with their own graders (BFCL v4 multi-turn, τ²-bench), as durable
 * workflows (`eval/<policy>/<bench>/…`, one activity per task and trial, results stored under content keys so a
 * rerun pays only for what is missing); `cm2 eval compare A B` (paired differences with bootstrap intervals);
 * `cm2 eval export POLICY --out FILE.jsonl`.
 *
 * The policy: the embedded base model (`--base`, the default), a run's checkpoint (`--run R --checkpoint it-N`
 * or `all`, served by cm2's policy server exactly as for rollouts), or any OpenAI-compatible endpoint with tool
 * calling (`--endpoint URL --model NAME [--api-key-env VAR]`, or a config's policy role with `--config`).
 *
 * @module
 */
import { type Client, WorkflowFailedError } from "@temporalio/client";
import { DefaultLogger, Runtime, Worker } from "@temporalio/worker";
import cliProgress from "cli-progress";
import type { Command } from "commander";
import * as fs from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { createEvalActivities, evalPaths } from "../activities/eval.ts";
import { sha256Hex } from "../activities/common.ts";
import { loadRunConfig, ROOT } from "../config.ts";
import type { RunConfig } from "../core/config.ts";
import {
  type Bench,
  BENCHMARKS,
  categoriesOf,
  compareResults,
  DEFAULT_SETTINGS,
  type EvalPolicy,
  type EvalResult,
  type EvalSettings,
  evalWorkflowId,
  exportLine,
  policyKey,
  type SummaryRow,
} from "../core/eval.ts";
import { EVAL_QUEUE, storeNames } from "../core/names.ts";
import { CachedStore } from "../store/cached.ts";
import { type ArtifactStore, getJson, type Ref } from "../store/mod.ts";
import { type EvalInput, evalProgressQuery, type EvalRun, evalWorkflow } from "../workflows/eval.ts";
import {
  fail,
  nonNegative,
  positiveInt,
  startOrAttach,
  storeFrom,
  withClient,
  workflowLink,
} from "./common.ts";

interface EvalOptions {
  bench: string;
  category?: string;
  limit?: number;
  trials?: number;
  concurrency: number;
  seed: number;
  base?: boolean;
  run?: string;
  checkpoint?: string;
  endpoint?: string;
  model?: string;
  apiKeyEnv?: string;
  config?: string;
  userEndpoint?: string;
  userModel?: string;
  userApiKeyEnv?: string;
  maxTokens: number;
  maxSteps: number;
  temperature?: number;
  taskTimeout: number;
  jsonl?: string;
  worker: boolean;
  taskQueue: string;
  store?: string;
}

/** The policies an `cm2 eval` names (several for `--checkpoint all`). */
export async function resolvePolicies(
  store: ArtifactStore,
  o: EvalOptions,
): Promise<{ policy: EvalPolicy; config: RunConfig }[]> {
  const chosen = [o.base, o.run, o.endpoint].filter(Boolean).length;
  if (chosen > 1) fail("name one policy: --base, --run R --checkpoint C, or --endpoint URL --model M");
  if (o.endpoint) {
    if (!o.model) fail("--endpoint needs --model (the name the endpoint serves)");
    const base = await loadRunConfig(o.config);
    const role = { baseURL: o.endpoint, model: o.model, ...(o.apiKeyEnv ? { apiKeyEnv: o.apiKeyEnv } : {}) };
    return [{
      policy: {
        label: o.model,
        identity: `endpoint ${o.endpoint} ${o.model}`,
        baseURL: o.endpoint,
        model: o.model,
        apiKeyEnv: o.apiKeyEnv ?? null,
        serve: null,
      },
      // the checklist benchmark rolls this endpoint out as the policy (no adapters)
      config: {
        ...base,
        models: { ...base.models, policy: { ...base.models.policy, ...role, adapterApi: "none" as const } },
      },
    }];
  }
  if (o.run) {
    if (!o.checkpoint) fail("--run needs --checkpoint it-N (or all)");
    const names = o.checkpoint === "all"
      ? (await store.listNames(`runs/${o.run}/checkpoints/`)).sort((a, b) => iterationOf(a) - iterationOf(b))
      : [storeNames.checkpoint(o.run, iterationOf(o.checkpoint))];
    if (names.length === 0) fail(`run ${o.run} has no checkpoints in ${store.url}`);
    const configRef = await runConfigRef(store, o.run, o.config);
    const config = await getJson<RunConfig>(store, configRef);
    return await Promise.all(names.map(async (name) => {
      const ref = await store.getName(name);
      if (!ref) fail(`no checkpoint ${name} in ${store.url}`);
      const manifest = await getJson<{ version: number }>(store, ref);
      const it = iterationOf(name);
      const policy: EvalPolicy = {
        label: `${o.run}-it-${it}`,
        identity: `checkpoint ${ref.sha256}`,
        baseURL: config.models.policy.baseURL,
        model: config.models.policy.model,
        apiKeyEnv: config.models.policy.apiKeyEnv ?? null,
        serve: { configRef, checkpoint: ref, version: manifest.version },
        run: { name: o.run!, iteration: it },
      };
      return { policy, config };
    }));
  }
  const config = await loadRunConfig(o.config);
  const p = config.models.policy;
  const served = p.adapterApi === "cm2" && !o.config;
  return [{
    policy: {
      label: o.config ? p.model : "base",
      identity: served
        ? `base ${config.trainer.base.kind}:${config.trainer.base.path}`
        : `endpoint ${p.baseURL} ${p.model}`,
      baseURL: p.baseURL,
      model: p.model,
      apiKeyEnv: p.apiKeyEnv ?? null,
      serve: served ? { configRef: null, checkpoint: null, version: 0 } : null,
    },
    config,
  }];
}

/**
 * The checklist benchmark's validation pass: the run name (`ev-<digest>`) names everything that decides its
 * outcome, so the same evaluation finds its stored pass.
 */
function checklistPlan(
  policy: EvalPolicy,
  config: RunConfig,
  input: EvalInput,
): NonNullable<EvalInput["checklist"]> {
  const what = {
    policy: policy.identity,
    limit: input.limit,
    trials: input.trials,
    dataset: config.dataset,
    judge: config.models.judge.model,
    simulator: config.models.simulator.model,
    cm2: { ...config.cm2, iterations: 0 },
  };
  // What the benchmark is, whatever the policy: its records, judge and simulator, and the episode rules.
  const { policy: _p, limit: _l, trials: _t, ...bench } = what;
  return {
    config,
    benchmark: `checklist-${sha256Hex(JSON.stringify(bench)).slice(0, 12)}`,
    runName: `ev-${sha256Hex(JSON.stringify(what)).slice(0, 16)}`,
    parent: (policy.serve?.checkpoint as Ref | null | undefined) ?? null,
    version: policy.serve?.version ?? 0,
  };
}

function iterationOf(name: string): number {
  const m = /(?:^|\/)it-(\d+)$/.exec(name);
  if (!m) fail(`${name} is not a checkpoint (it-<n>)`);
  return Number(m[1]);
}

/**
 * The config a run's last iteration recorded (its metrics name it). A run from before configs were recorded
 * gets `--config` (default: the embedded demo's), with a warning.
 */
async function runConfigRef(store: ArtifactStore, run: string, file?: string): Promise<Ref> {
  const names = (await store.listNames(`runs/${run}/metrics/`)).sort();
  for (const n of names.reverse()) {
    const ref = await store.getName(n);
    const m = ref ? await getJson<{ config?: Ref }>(store, ref) : null;
    if (m?.config) return m.config;
  }
  console.error(
    `[cm2 eval] run ${run} recorded no config (a run from before configs were recorded): using ${
      file ?? "the default config"
    } for its policy server and roles`,
  );
  const config = { ...await loadRunConfig(file), name: run };
  return await new CachedStore(store).writeJson(config);
}

function settingsOf(o: EvalOptions, judge: { baseURL: string; model: string }): EvalSettings {
  return {
    ...DEFAULT_SETTINGS,
    maxTokens: o.maxTokens,
    maxSteps: o.maxSteps,
    temperature: o.temperature ?? null,
    user: o.userEndpoint ? { baseURL: o.userEndpoint, model: o.userModel ?? judge.model } : judge,
  };
}

const pct = (x: number) => (100 * x).toFixed(1);

/** `cm2 eval`'s table. */
export function formatTable(rows: (SummaryRow & { policy: string })[]): string {
  const head = [
    "policy",
    "benchmark",
    "category",
    "tasks",
    "score",
    "95% CI",
    "tokens",
    "seconds",
    "failures",
  ];
  const body = rows.map((r) => [
    r.policy,
    r.bench,
    r.category,
    `${r.tasks}×${r.trials}`,
    pct(r.score),
    `[${pct(r.ci95[0])}, ${pct(r.ci95[1])}]`,
    String(r.tokens),
    r.seconds.toFixed(0),
    Object.entries(r.failures).map(([k, n]) => `${k} ${n}`).join(", ") || "0",
  ]);
  return textTable(head, body);
}

/** Rows of text in columns padded to their widest cell. */
function textTable(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  return [head, ...body].map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join(
    "\n",
  );
}

/** Runs one evaluation workflow to its end with a progress bar; returns its record. */
async function runOne(client: Client, input: EvalInput, id: string, taskQueue: string): Promise<EvalRun> {
  const handle = await startOrAttach(
    client,
    id,
    () => client.workflow.start(evalWorkflow, { taskQueue, workflowId: id, args: [input] }),
  );
  const bar = new cliProgress.SingleBar({
    format:
      `${input.policy.label} ${input.bench} [{bar}] {value}/{total} trials | failed {failed} | from store {reused}`,
    hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  const done = handle.result();
  let finished = false;
  done.then(() => (finished = true), () => (finished = true));
  while (!finished) {
    const p = await handle.query(evalProgressQuery).catch(() => null);
    if (p && p.total > 0) {
      if (!started) bar.start(p.total, p.done, { failed: p.failed, reused: p.reused });
      started = true;
      bar.update(p.done, { failed: p.failed, reused: p.reused });
    }
    await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 1_000))]);
  }
  if (started) bar.stop();
  try {
    return await done;
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      fail(`${id} failed: ${err.cause?.message ?? err.message}\nWeb UI: ${workflowLink(id)}`);
    }
    throw err;
  }
}

/** Every stored result of a policy (by key or label), optionally of one benchmark. */
async function storedResults(store: ArtifactStore, who: string, bench?: string): Promise<EvalResult[]> {
  const keys = [...new Set((await store.listNames("evals/")).map((n) => n.split("/")[1]!))];
  const matches = keys.filter((k) =>
    k === who || k.startsWith(`${who}-`) && /^[0-9a-f]{10}$/.test(k.slice(who.length + 1))
  );
  if (matches.length === 0) fail(`no evaluation results for ${who} (known: ${keys.join(", ") || "none"})`);
  if (matches.length > 1) fail(`${who} names several policies: ${matches.join(", ")}; use one of these keys`);
  const cached = new CachedStore(store);
  const names = (await store.listNames(`evals/${matches[0]}/${bench ? `${bench}/` : ""}`))
    .filter((n) => !n.split("/").includes("runs"));
  const out: EvalResult[] = [];
  for (const n of names) {
    const ref = await store.getName(n);
    if (ref) {
      const r = await cached.readJson<EvalResult>(ref);
      if (r.schema === "cm2.eval-result/v1") out.push(r);
    }
  }
  return out;
}

/** Starts an eval worker in this process (workflows and eval activities on `cm2-eval`); returns its stop. */
async function inProcessWorker(store: ArtifactStore, taskQueue: string): Promise<() => Promise<void>> {
  const { connectWorker } = await import("../config.ts");
  try {
    Runtime.install({ logger: new DefaultLogger("WARN") }); // the SDK's INFO lines would bury the progress bar
  } catch { /* installed already */ }
  const { connection, namespace } = await connectWorker();
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue,
    workflowsPath: fileURLToPath(new URL("../workflows/mod.ts", import.meta.url)),
    activities: createEvalActivities({ store, cached: new CachedStore(store), root: ROOT }),
    maxConcurrentActivityTaskExecutions: 16,
    shutdownGraceTime: "5 seconds",
  });
  const running = worker.run();
  return async () => {
    try {
      worker.shutdown();
    } catch { /* stopped already: the SDK shuts workers down on SIGINT/SIGTERM */ }
    await running.catch(() => {});
    await connection.close();
  };
}

async function evalAction(o: EvalOptions): Promise<void> {
  const store = storeFrom(o);
  const benches = o.bench.split(",").map((b) => b.trim()) as Bench[];
  for (const b of benches) {
    if (!(b in BENCHMARKS)) fail(`unknown benchmark ${b}; known: ${Object.keys(BENCHMARKS).join(", ")}`);
  }
  const named = o.category ? o.category.split(",").map((c) => c.trim()) : [];
  const plans = benches.map((bench) => {
    try {
      return { bench, categories: categoriesOf(bench, named) };
    } catch (err) {
      fail((err as Error).message);
    }
  });
  if (!(await fs.stat(evalPaths(ROOT).python).then(() => true, () => false))) {
    // The first evaluation installs the benchmarks' packages (their own venv; uv shows progress).
    console.error("[cm2 eval] first evaluation: installing the eval venv (`deno task setup:eval`; ~6 GB)");
    const { ensureEvalVenv } = await import("../scripts/eval_setup.ts");
    try {
      await ensureEvalVenv();
    } catch (err) {
      fail(`${(err as Error).message}; retry with \`deno task setup:eval\``);
    }
  }
  const policies = await resolvePolicies(store, o);
  const judge = (await loadRunConfig(o.config)).models.judge;
  const settings = settingsOf(o, { baseURL: judge.baseURL, model: judge.model });
  const rows: (SummaryRow & { policy: string })[] = [];
  const lines: string[] = [];
  await withClient(async ({ client }) => {
    const stopWorker = o.worker ? await inProcessWorker(store, o.taskQueue) : null;
    try {
      for (const { policy, config } of policies) {
        for (const plan of plans) {
          const key = policyKey(policy, sha256Hex);
          // Only τ² has a user simulator: it is no part of the other benchmarks' keys.
          const benchSettings = plan.bench === "tau2" ? settings : { ...settings, user: null };
          const input: EvalInput = {
            policy,
            bench: plan.bench,
            categories: plan.categories,
            limit: o.limit ?? null,
            trials: o.trials ?? BENCHMARKS[plan.bench].trials,
            concurrency: o.concurrency,
            seed: o.seed,
            settings: benchSettings,
            userApiKeyEnv: o.userApiKeyEnv ?? judge.apiKeyEnv ?? null,
            taskTimeoutS: o.taskTimeout,
            policyKey: key,
          };
          if (plan.bench === "checklist") input.checklist = checklistPlan(policy, config, input);
          const id = evalWorkflowId(policy, plan.bench, { ...input, policy: null }, sha256Hex);
          const run = await runOne(client, input, id, o.taskQueue);
          rows.push(...run.summary.map((r) => ({ ...r, policy: policy.label })));
          if (o.jsonl) {
            for (const r of run.results) {
              lines.push(exportLine({ ...r, policy, settings: benchSettings, detail: {} } as EvalResult));
            }
          }
        }
      }
    } finally {
      await stopWorker?.();
    }
  });
  console.log(formatTable(rows));
  if (o.jsonl) {
    const tmp = `${o.jsonl}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    await fs.writeFile(tmp, lines.map((l) => `${l}\n`).join(""));
    await fs.rename(tmp, o.jsonl);
    console.log(`${lines.length} lines → ${o.jsonl}`);
  }
}

/**
 * `--store` and `--bench` are also `cm2 eval`'s own options, and commander gives them to the parent when they
 * follow a sub-command: take the parent's when the user typed them (not its defaults).
 */
function withParentOptions<T extends { bench?: string; store?: string }>(o: T, cmd: Command): T {
  const parent = cmd.parent;
  if (!parent) return o;
  const typed = (k: "bench" | "store") =>
    parent.getOptionValueSource(k) === "cli" ? { [k]: parent.opts()[k] as string } : {};
  return { ...typed("bench"), ...typed("store"), ...o };
}

/** Registers `cm2 eval`, `cm2 eval compare`, `cm2 eval export`. */
export function registerEvalCommands(program: Command): void {
  const ev = program.command("eval")
    .description(
      "evaluate a policy on BFCL v4 multi-turn and τ²-bench with their own graders (durable, resumable)",
    )
    .option("--bench <list>", "benchmarks: bfcl, tau2, checklist (comma-separated)", "bfcl")
    .option("--category <list>", "categories (default: all of each benchmark that runs offline)")
    .option("--limit <n>", "tasks per category: a fixed, seeded subset", positiveInt)
    .option("--trials <k>", "trials per task (default: bfcl 1, tau2 4)", positiveInt)
    .option("--concurrency <n>", "tasks in flight", positiveInt, 2)
    .option("--seed <n>", "seed of the --limit subset", nonNegative, 0)
    .option("--base", "the embedded base model (the default policy)")
    .option("--run <name>", "a training run whose checkpoint to evaluate")
    .option("--checkpoint <it-n|all>", "with --run: it-<n>, or all of them in order")
    .option("--endpoint <url>", "an OpenAI-compatible endpoint with tool calling (base URL with /v1)")
    .option("--model <name>", "with --endpoint: the model it serves")
    .option("--api-key-env <VAR>", "with --endpoint: the environment variable holding its key")
    .option(
      "--config <file>",
      "a run config: its policy role is the policy, its judge role τ²'s user simulator",
    )
    .option("--user-endpoint <url>", "τ²'s user simulator endpoint (default: the config's judge role)")
    .option("--user-model <name>", "τ²'s user simulator model")
    .option("--user-api-key-env <VAR>", "the user simulator's key variable")
    .option("--max-tokens <n>", "tokens per model call", positiveInt, DEFAULT_SETTINGS.maxTokens)
    .option(
      "--max-steps <n>",
      "steps per task (τ²) / per turn (BFCL)",
      positiveInt,
      DEFAULT_SETTINGS.maxSteps,
    )
    .option("--temperature <t>", "sampling temperature (default: the benchmark's)", Number)
    .option("--task-timeout <s>", "wall-clock cap of one trial, seconds", positiveInt, 1800)
    .option("--jsonl <file>", "also write one line per task and trial")
    .option("--no-worker", "do not start an eval worker in this process (use running ones, e.g. worker.ts)")
    .option("--task-queue <queue>", "the evaluations' task queue", EVAL_QUEUE)
    .option("--store <url>", "the artifact store")
    .action(evalAction);

  ev.command("compare")
    .argument("<a>", "policy label or key (as `cm2 eval` printed it)")
    .argument("<b>", "policy label or key")
    .option("--bench <bench>", "only this benchmark")
    .option("--store <url>", "the artifact store")
    .description(
      "B − A per benchmark and category over the tasks both evaluated, with a paired bootstrap 95% CI",
    )
    .action(async (a: string, b: string, o: { bench?: string; store?: string }, cmd: Command) => {
      o = withParentOptions(o, cmd);
      const store = storeFrom(o);
      const { rows, unpaired } = compareResults(
        await storedResults(store, a, o.bench),
        await storedResults(store, b, o.bench),
      );
      const head = ["benchmark", "category", "tasks", a, b, "B − A", "95% CI"];
      const body = rows.map((r) => [
        r.bench,
        r.category,
        String(r.tasks),
        pct(r.a),
        pct(r.b),
        `${r.delta >= 0 ? "+" : ""}${pct(r.delta)}`,
        `[${pct(r.ci95[0])}, ${pct(r.ci95[1])}]`,
      ]);
      console.log(textTable(head, body));
      if (unpaired.length) console.log(`not in both: ${unpaired.join(", ")}`);
    });

  ev.command("export")
    .argument("<policy>", "policy label or key")
    .requiredOption("--out <file>", "JSONL file: one line per task and trial")
    .option("--bench <bench>", "only this benchmark")
    .option("--store <url>", "the artifact store")
    .description(
      "every stored result of a policy as JSONL (policy, benchmark, task id, score, tokens, seconds, error)",
    )
    .action(async (who: string, o: { out: string; bench?: string; store?: string }, cmd: Command) => {
      o = withParentOptions(o, cmd);
      const results = await storedResults(storeFrom(o), who, o.bench);
      const tmp = `${o.out}.tmp-${crypto.randomUUID().slice(0, 8)}`;
      await fs.writeFile(tmp, results.map((r) => `${exportLine(r)}\n`).join(""));
      await fs.rename(tmp, o.out);
      console.log(`${results.length} lines → ${o.out}`);
    });
}
