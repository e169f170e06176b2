/**
 * The command-line side of the durable LLM data stages (workflow `recordStage`): `cm2 data filter --llm`
 * (the LLM quality judge, workflow id `filter/<out>`) and `cm2 data compress-cot` (CoT compression, id
 * `compress/<out>`). A command starts the stage, or attaches to the running one of the same `--out` and
 * applies `--budget-*` / `--stop` to it; then it shows a progress bar and prints a summary computed from
 * the store. A re-run on the same `--out` starts again and reuses every stored result (no call is paid
 * twice).
 *
 * Exit codes, as `cm2 label`: 0 done, 1 error, 3 paused on its budget (raise it with the same command and
 * a higher `--budget-usd`/`--budget-tokens`, or end it with `--stop`).
 *
 * @module
 */
import type { Client, WorkflowHandle } from "@temporalio/client";
import cliProgress from "cli-progress";
import { type Command, InvalidArgumentError } from "commander";
import { promises as fsp } from "node:fs";
import type { StageReport, StageSummary } from "../activities/record_stage.ts";
import type { RunConfig } from "../core/config.ts";
import { cotCompressStage } from "../core/cot_compress.ts";
import { qualityFilterStage } from "../core/quality_filter.ts";
import type { StageKind } from "../core/record_stage.ts";
import { datasetRef } from "../store/datasets.ts";
import { type ArtifactStore, getJson } from "../store/mod.ts";
import {
  configOrFail,
  fail,
  nonNegative,
  positiveInt,
  startOrAttach,
  storeFrom,
  withClient,
} from "./common.ts";
import { EXIT_PAUSED } from "./label.ts";
import type { LabelBudget } from "../workflows/labeling.ts";
import {
  recordStage,
  setStageBudgetUpdate,
  type StageProgress,
  stageProgressQuery,
  type StageRunInput,
  stageWorkflowId,
  stopStageSignal,
} from "../workflows/record_stage.ts";

/** Options of the stage commands, as commander parses them. */
export interface StageCommandOptions {
  out?: string;
  config?: string;
  budgetUsd?: number;
  budgetTokens?: number;
  concurrency?: number;
  attempts?: number;
  limit?: number;
  target?: number;
  store?: string;
  taskQueue?: string;
  stop?: boolean;
  detach?: boolean;
  json?: boolean;
  /** `filter`: write `{uuid, reasons}` JSON lines of the rejected records here. */
  rejected?: string;
  /** Milliseconds between progress queries. */
  interval?: number;
}

/** The stage options both commands take (`--out`, `--store` and `--rejected` are the command's own). */
export function addStageOptions(cmd: Command): Command {
  return cmd
    .option("--config <file>", "run config (JSON): models.labeler endpoint and prices, the stages section")
    .option("--budget-usd <x>", "pause when this run's spend reaches $x (needs labeler prices)", nonNegative)
    .option("--budget-tokens <n>", "pause when this run's calls reach n tokens", nonNegative)
    .option("--concurrency <n>", "model calls in flight", positiveInt)
    .option("--attempts <n>", "calls per record before its last answer's problems settle it", positiveInt)
    .option("--limit <n>", "only the first n records", positiveInt)
    .option("--task-queue <queue>", "orchestrator task queue (default: the config's temporal.taskQueue)")
    .option("--stop", "stop the running stage: finish the calls in flight, write the output")
    .option("--detach", "start (or update) the stage and return without watching")
    .option("--json", "print the summary as one JSON line");
}

/** Option parser: a share in (0, 1]. */
function share(v: string): number {
  const x = Number(v);
  if (!(x > 0 && x <= 1)) throw new InvalidArgumentError(`expected a number in (0, 1], got ${v}`);
  return x;
}

/** The options that only a stage run reads, with their flags. */
const STAGE_FLAGS: readonly [keyof StageCommandOptions, string][] = [
  ["config", "--config"],
  ["budgetUsd", "--budget-usd"],
  ["budgetTokens", "--budget-tokens"],
  ["concurrency", "--concurrency"],
  ["attempts", "--attempts"],
  ["limit", "--limit"],
  ["taskQueue", "--task-queue"],
  ["stop", "--stop"],
  ["detach", "--detach"],
  ["json", "--json"],
];

/** Options of `data filter` as its action receives them. */
type FilterOptions = StageCommandOptions & {
  llm?: boolean;
  disable?: string;
  enable?: string;
  allowEmpty?: boolean;
};

/**
 * The action of `cm2 data filter`: the rule-based filter as before, or with `--llm` the LLM quality stage.
 * A stage flag without `--llm`, or a rule flag with it, is an error naming the flags.
 */
export function llmOrRules<O>(
  rules: (name: string, opts: O) => Promise<void>,
): (name: string, opts: O & FilterOptions) => Promise<void> {
  return async (name, opts) => {
    const stageOnly = STAGE_FLAGS.filter(([key]) => opts[key] !== undefined).map(([, flag]) => flag);
    if (!opts.llm) {
      if (stageOnly.length > 0) fail(`${stageOnly.join(", ")} only apply with --llm`);
      return await rules(name, opts);
    }
    const rulesOnly =
      ([["disable", "--disable"], ["enable", "--enable"], ["allowEmpty", "--allow-empty"]] as const)
        .filter(([key]) => opts[key] !== undefined).map(([, flag]) => flag);
    if (rulesOnly.length > 0) fail(`${rulesOnly.join(", ")} belong to the rule-based filter, not to --llm`);
    if (!opts.out) fail("--llm needs --out <name>: the output dataset (the workflow id is filter/<out>)");
    Deno.exitCode = await stageCommand("filter", name, { ...opts, out: opts.out });
  };
}

/** Registers `cm2 data compress-cot` on the `data` command group. */
export function registerCompressCot(data: Command): void {
  const cmd = data.command("compress-cot")
    .argument("<dataset>", "dataset name in the store")
    .requiredOption("--out <name>", "output dataset name (the workflow id is compress/<out>)")
    .option(
      "--target <share>",
      "each reasoning keeps at most this share of its length in tokens (default: stages.compressTarget, 0.5)",
      share,
    )
    .option("--store <url>", "store URL or path (default: the config's store.url)")
    .description(
      "rewrite the <think> reasoning of assistant messages shorter with the labeler model, keeping the plan and " +
        "decisions; tool calls and user-visible text are checked byte-identical, and a record that cannot be " +
        `compressed is kept unchanged (resumable, budgeted; exit code ${EXIT_PAUSED} when paused on its budget)`,
    );
  addStageOptions(cmd).action(async (dataset: string, opts: StageCommandOptions & { out: string }) => {
    Deno.exitCode = await stageCommand("compress", dataset, opts);
  });
}

/** The workflow input from the config and the options. */
export function stageRunInput(
  kind: StageKind,
  dataset: string,
  config: RunConfig,
  opts: StageCommandOptions & { out: string },
): StageRunInput {
  const c = config.stages;
  const params = kind === "compress" ? { target: opts.target ?? c.compressTarget } : {};
  const stage = kind === "compress" ? cotCompressStage : qualityFilterStage;
  const usd = opts.budgetUsd ?? c.budgetUsd;
  const tokens = opts.budgetTokens ?? c.budgetTokens;
  const budget: LabelBudget = {};
  if (usd !== undefined) budget.usd = usd;
  if (tokens !== undefined) budget.tokens = Math.floor(tokens);
  return {
    kind,
    config,
    dataset,
    out: opts.out,
    promptVersion: stage.promptVersion(params),
    params,
    ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
    concurrency: opts.concurrency ?? c.concurrency,
    maxAttempts: opts.attempts ?? c.maxAttempts,
    budget,
  };
}

/** Runs a stage command; returns the exit code. */
export async function stageCommand(
  kind: StageKind,
  dataset: string,
  opts: StageCommandOptions & { out: string },
): Promise<number> {
  const config = await configOrFail(opts.config);
  const input = stageRunInput(kind, dataset, config, opts);
  const problem = (kind === "compress" ? cotCompressStage : qualityFilterStage).checkParams(input.params);
  if (problem) fail(problem);
  if (input.budget.usd !== undefined && !config.models.labeler.prices) {
    fail(
      "A USD budget needs prices: set models.labeler.prices {input, output} (USD per 1M tokens) in the config",
    );
  }
  const store = storeFrom({ store: opts.store ?? config.store.url });
  if (!(await datasetRef(store, dataset))) {
    fail(`No dataset named ${JSON.stringify(dataset)} in ${store.url}; import it with \`cm2 data import\``);
  }
  const id = stageWorkflowId(kind, input.out);
  return await withClient(async ({ client }) => {
    let fresh = false;
    const handle = await startOrAttach(client, id, async () => {
      if (opts.stop) fail(`No ${kind} stage ${id} is running`);
      fresh = true;
      await client.workflow.start(recordStage, {
        taskQueue: opts.taskQueue ?? config.temporal.taskQueue,
        workflowId: id,
        args: [input],
        memo: { dataset, out: input.out, promptVersion: input.promptVersion },
      });
    });
    if (!fresh) await steer(handle, id, opts);
    if (opts.detach) return 0;
    return await follow(client, handle, kind, store, opts);
  });
}

/** Applies `--budget-*` and `--stop` to a running stage. */
async function steer(handle: WorkflowHandle, id: string, opts: StageCommandOptions): Promise<void> {
  const change: LabelBudget = {
    ...(opts.budgetUsd !== undefined ? { usd: opts.budgetUsd } : {}),
    ...(opts.budgetTokens !== undefined ? { tokens: Math.floor(opts.budgetTokens) } : {}),
  };
  if (Object.keys(change).length > 0) {
    const now = await handle.executeUpdate(setStageBudgetUpdate, { args: [change] });
    const parts = [now.usd != null ? `$${now.usd}` : "", now.tokens != null ? `${now.tokens} tokens` : ""];
    console.error(`budget of ${id} is now ${parts.filter(Boolean).join(" and ") || "unlimited"}`);
  }
  if (opts.stop) {
    await handle.signal(stopStageSignal);
    console.error(`stop sent to ${id}`);
  }
}

/** The bar's counts for a kind: the outcomes that matter most, then failures and spend. */
function barFields(kind: StageKind, p: StageProgress): Record<string, string | number> {
  const s = p.counters.statuses;
  const n = (k: string) => s[k] ?? 0;
  const tokens = p.counters.promptTokens + p.counters.completionTokens;
  const spend = `${tokens} tokens${p.counters.costUsd > 0 ? `, $${p.counters.costUsd.toFixed(4)}` : ""}`;
  return kind === "filter"
    ? {
      a: `kept ${n("kept")}`,
      b: `rejected ${n("rejected") + n("unjudged")}`,
      failed: p.counters.failed,
      spend,
    }
    : {
      a: `compressed ${n("compressed")}`,
      b: `unchanged ${n("no-reasoning") + n("not-compressed")}`,
      failed: p.counters.failed,
      spend,
    };
}

/** Watches the stage with a progress bar; prints the summary, or says how to resume when it pauses. */
async function follow(
  client: Client,
  handle: WorkflowHandle,
  kind: StageKind,
  store: ArtifactStore,
  opts: StageCommandOptions,
): Promise<number> {
  type Ending = { summary: StageSummary } | { error: Error };
  let ending: Ending | undefined;
  const ended = handle.result().then(
    (summary): Ending => (ending = { summary: summary as StageSummary }),
    (error): Ending => (ending = { error: error as Error }),
  );
  let bar: cliProgress.SingleBar | undefined;
  while (ending === undefined) {
    // No worker up (restarting) means no answer: do not let a query hold the loop.
    const p = await client.connection.withDeadline(Date.now() + 2_000, () => handle.query(stageProgressQuery))
      .catch(() => undefined);
    if (p !== undefined && p.records > 0) {
      if (!bar) {
        bar = new cliProgress.SingleBar({
          format: `${kind} [{bar}] {value}/{total} | {a} {b} failed {failed} | {spend}`,
          hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        bar.start(p.records, p.counters.done, barFields(kind, p));
      } else bar.update(p.counters.done, barFields(kind, p));
      if (p.phase === "paused") {
        bar.stop();
        console.error(
          `paused: ${p.pausedReason}. Raise the budget with the same command and a higher --budget-usd or ` +
            "--budget-tokens, or end it with --stop",
        );
        return EXIT_PAUSED;
      }
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([ended, new Promise((ok) => (timer = setTimeout(ok, opts.interval ?? 500)))]);
    clearTimeout(timer);
  }
  bar?.stop();
  const end: Ending = ending;
  if ("error" in end) {
    const why = (end.error as { cause?: Error }).cause?.message ?? end.error.message;
    fail(`The ${kind} stage ${handle.workflowId} failed: ${why}`);
  }
  const { summary } = end;
  const report = await getJson<StageReport>(store, summary.reportRef).catch(() => undefined);
  if (opts.rejected && kind === "filter") {
    const lines = (report?.rejections ?? []).map((r) => JSON.stringify({ uuid: r.uuid, reasons: r.reasons }));
    await fsp.writeFile(opts.rejected, lines.map((l) => `${l}\n`).join(""));
    if (!opts.json) console.log(`rejected records → ${opts.rejected}`);
  }
  if (opts.json) {
    console.log(
      JSON.stringify({ ...summary, rejections: report?.rejections ?? [], failures: report?.failures ?? [] }),
    );
  } else console.log(formatStageSummary(summary, report));
  return 0;
}

const num = (x: number) => x.toLocaleString("en-US");
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** The human-readable summary of a stage run (the report adds the per-record reasons and failures). */
export function formatStageSummary(s: StageSummary, report?: StageReport): string {
  const c = (k: string) => s.counts[k] ?? 0;
  const out: string[] = [];
  const listReasons = (statuses: string[]) => {
    for (const r of (report?.rejections ?? []).filter((x) => statuses.includes(x.status)).slice(0, 50)) {
      out.push(`    ${r.uuid} (${plural(r.attempts, "call")}):`);
      for (const reason of r.reasons.slice(0, 5)) out.push(`      ${reason.path}: ${reason.message}`);
      if (r.reasons.length > 5) out.push(`      … and ${r.reasons.length - 5} more`);
    }
  };
  const target = `dataset ${s.out} with ${plural(s.outputRecords, "record")} (${s.datasetRef.uri})`;
  if (s.kind === "filter") {
    out.push(`LLM filter of ${s.dataset}: kept ${c("kept")} of ${plural(s.records, "record")} → ${target}`);
    out.push(`  rejected ${c("rejected")}${c("rejected") > 0 ? ":" : ""}`);
    listReasons(["rejected"]);
    if (c("unjudged") > 0) {
      out.push(`  unjudged ${c("unjudged")} (no valid verdict after every attempt; left out):`);
      listReasons(["unjudged"]);
    }
  } else {
    const unchanged = c("no-reasoning") + c("not-compressed");
    out.push(
      `CoT compression of ${s.dataset} to ≤ ${s.params.target} of each reasoning: compressed ${
        c("compressed")
      } ` +
        `of ${plural(s.records, "record")} → ${target}`,
    );
    out.push(
      `  unchanged ${unchanged}: ${c("no-reasoning")} without reasoning, ${
        c("not-compressed")
      } not compressed` +
        (c("not-compressed") > 0 ? " (kept as they were):" : ""),
    );
    listReasons(["not-compressed"]);
    if (s.measure) {
      const ratio = s.measure.before > 0 ? (s.measure.after / s.measure.before).toFixed(2) : "n/a";
      out.push(`  reasoning tokens ${num(s.measure.before)} → ${num(s.measure.after)} (ratio ${ratio})`);
    }
  }
  const kept = s.kind === "compress" ? "kept unchanged; " : "";
  out.push(`  failed ${s.failed}${s.failed > 0 ? ` (no result stored; ${kept}a re-run retries them):` : ""}`);
  for (const f of report?.failures ?? []) out.push(`    ${f.uuid}: ${f.reason}`);
  if (s.skipped > 0) out.push(`  skipped ${s.skipped} (stopped before they started)`);
  out.push(
    `  tokens ${num(s.tokens.promptTokens)} prompt + ${num(s.tokens.completionTokens)} completion over ` +
      `${plural(s.attempts, "call")}; this run ${plural(s.thisRun.calls, "call")}, ` +
      `${num(s.thisRun.promptTokens)} + ${num(s.thisRun.completionTokens)} tokens`,
  );
  if (s.costUsd !== null) {
    out.push(`  cost ≈ $${s.costUsd.toFixed(4)} (this run $${(s.thisRun.costUsd ?? 0).toFixed(4)})`);
  }
  out.push(`  prompt ${s.promptVersion}; report ${s.reportRef.uri}`);
  return out.join("\n");
}
