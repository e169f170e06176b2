/**
 * `cm2 label DATASET`: labels a stored dataset's records with checklists on Temporal (workflow
 * `labelDataset`, id `label/<out>`), shows a progress bar, then a summary computed from the store:
 * labeled, repaired (per repair kind), rejected (with reasons), failed, tokens and, with prices
 * configured, the estimated cost. Running the same command again attaches to a running labeling
 * (and applies `--budget-*` or `--stop` to it), or starts a new one that reuses every stored result.
 *
 * Exit codes: 0 done, 1 error, 3 paused on its budget (raise it with the same command and a higher
 * `--budget-usd`/`--budget-tokens`, or end it with `--stop`).
 *
 * @module
 */
import { type Client, WorkflowNotFoundError } from "@temporalio/client";
import cliProgress from "cli-progress";
import type { Command } from "commander";
import type { LabelReport, LabelSummary } from "../activities/labeling.ts";
import { ConfigError, connectClient, loadRunConfig, webUiUrl } from "../config.ts";
import type { RunConfig } from "../core/config.ts";
import { LABEL_PROMPT_VERSION, REPAIR_KINDS } from "../core/labeling.ts";
import { datasetRef } from "../store/datasets.ts";
import { type ArtifactStore, getJson, parseRef } from "../store/mod.ts";
import { nonNegative, positiveInt, storeFrom } from "./common.ts";
import {
  type LabelBudget,
  labelDataset,
  type LabelProgress,
  labelProgressQuery,
  type LabelRunInput,
  labelWorkflowId,
  setLabelBudgetUpdate,
  stopLabelingSignal,
} from "../workflows/labeling.ts";

/** Options of `cm2 label`, as commander parses them. */
export interface LabelCommandOptions {
  variants?: number;
  limit?: number;
  out?: string;
  config?: string;
  budgetUsd?: number;
  budgetTokens?: number;
  concurrency?: number;
  attempts?: number;
  store?: string;
  taskQueue?: string;
  stop?: boolean;
  detach?: boolean;
  json?: boolean;
  interval?: number;
}

/** Exit code of a labeling that paused on its budget. */
export const EXIT_PAUSED = 3;

class CliError extends Error {}

/** Adds `label` to the cm2 command line. */
export function registerLabelCommands(program: Command): void {
  program.command("label")
    .argument("<dataset>", "dataset name in the store (import files first with `cm2 data import`)")
    .option("--variants <k>", "checklist variants per record", positiveInt)
    .option("--limit <n>", "label only the first n records", positiveInt)
    .option("--out <name>", "output dataset name (default: <dataset>-labeled)")
    .option("--config <file>", "run config (JSON): models.labeler endpoint and prices, labeling defaults")
    .option(
      "--budget-usd <x>",
      "pause when this run's labeler spend reaches $x (needs labeler prices)",
      nonNegative,
    )
    .option("--budget-tokens <n>", "pause when this run's labeler calls reach n tokens", nonNegative)
    .option("--concurrency <n>", "labeler calls in flight", positiveInt)
    .option("--attempts <n>", "calls per record-variant before it is rejected", positiveInt)
    .option("--store <url>", "store URL or path (default: the config's store.url)")
    .option("--task-queue <queue>", "orchestrator task queue (default: the config's temporal.taskQueue)")
    .option("--stop", "stop a running labeling: finish calls in flight, write the output")
    .option("--detach", "start (or update) the labeling and return without watching")
    .option("--json", "print the summary as one JSON line")
    .description(
      "label a dataset's records with CM2 checklists (one labeler call per record-variant, resumable, budgeted); " +
        `exit code ${EXIT_PAUSED} when paused on its budget`,
    )
    .action(async (dataset: string, opts: LabelCommandOptions) => {
      try {
        Deno.exitCode = await labelCommand(dataset, opts);
      } catch (err) {
        if (err instanceof CliError || err instanceof ConfigError) {
          console.error(`error: ${err.message}`);
          Deno.exit(1);
        }
        throw err;
      }
    });
}

/** The workflow input for a labeling from the config and the command-line options. */
export function labelRunInput(dataset: string, config: RunConfig, opts: LabelCommandOptions): LabelRunInput {
  const l = config.labeling;
  const budgetUsd = opts.budgetUsd ?? l.budgetUsd;
  const budgetTokens = opts.budgetTokens ?? l.budgetTokens;
  return {
    config,
    dataset,
    out: opts.out ?? `${dataset}-labeled`,
    promptVersion: LABEL_PROMPT_VERSION,
    variants: opts.variants ?? l.variants,
    ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
    concurrency: opts.concurrency ?? l.concurrency,
    maxAttempts: opts.attempts ?? l.maxAttempts,
    weightRepairTolerance: l.weightRepairTolerance,
    budget: {
      ...(budgetUsd !== undefined ? { usd: budgetUsd } : {}),
      ...(budgetTokens !== undefined ? { tokens: Math.floor(budgetTokens) } : {}),
    },
  };
}

/** Runs `cm2 label`; returns the exit code. */
export async function labelCommand(dataset: string, opts: LabelCommandOptions): Promise<number> {
  const config = await loadRunConfig(opts.config);
  const input = labelRunInput(dataset, config, opts);
  if (input.budget.usd !== undefined && !config.models.labeler.prices) {
    throw new CliError(
      "A USD budget needs prices: set models.labeler.prices {input, output} (USD per 1M tokens) in the config",
    );
  }
  const store = storeFrom({ store: opts.store ?? config.store.url });
  if (!(await datasetRef(store, dataset))) {
    throw new CliError(
      `No dataset named ${JSON.stringify(dataset)} in ${store.url}; import it with \`cm2 data import\``,
    );
  }
  const id = labelWorkflowId(input.out);
  const taskQueue = opts.taskQueue ?? config.temporal.taskQueue;
  let conn;
  try {
    conn = await connectClient();
  } catch (err) {
    throw new CliError(
      `Cannot reach Temporal at ${Deno.env.get("TEMPORAL_ADDRESS") ?? "127.0.0.1:7233"}: ${
        (err as Error).message
      }. ` +
        "Start it with `deno task dev`, or set TEMPORAL_ADDRESS",
    );
  }
  try {
    const { client } = conn;
    const handle = client.workflow.getHandle(id);
    const running = await handle.describe().then((d) => d.status.name === "RUNNING", (err) => {
      if (err instanceof WorkflowNotFoundError) return false;
      throw err;
    });
    if (running) {
      const change: LabelBudget = {};
      if (opts.budgetUsd !== undefined) change.usd = opts.budgetUsd;
      if (opts.budgetTokens !== undefined) change.tokens = Math.floor(opts.budgetTokens);
      if (Object.keys(change).length > 0) {
        const now = await handle.executeUpdate(setLabelBudgetUpdate, { args: [change] });
        console.error(`budget of ${id} is now ${describeBudget(now)}`);
      }
      if (opts.stop) {
        await handle.signal(stopLabelingSignal);
        console.error(`stop sent to ${id}`);
      }
      if (!opts.stop && Object.keys(change).length === 0) console.error(`attached to running ${id}`);
    } else {
      if (opts.stop) throw new CliError(`No labeling ${id} is running`);
      await client.workflow.start(labelDataset, {
        taskQueue,
        workflowId: id,
        args: [input],
        memo: { dataset, out: input.out, promptVersion: input.promptVersion },
      });
      console.error(
        `started ${id} (prompt ${input.promptVersion}); Web UI: ${webUiUrl()}/namespaces/default/workflows/${
          encodeURIComponent(id)
        }`,
      );
    }
    if (opts.detach) return 0;
    return await watch(client, id, store, opts);
  } finally {
    await conn.connection.close();
  }
}

function describeBudget(b: LabelBudget): string {
  const parts = [
    ...(b.usd !== undefined && b.usd !== null ? [`$${b.usd}`] : []),
    ...(b.tokens !== undefined && b.tokens !== null ? [`${b.tokens} tokens`] : []),
  ];
  return parts.length > 0 ? parts.join(" and ") : "unlimited";
}

async function watch(
  client: Client,
  id: string,
  store: ArtifactStore,
  opts: LabelCommandOptions,
): Promise<number> {
  const handle = client.workflow.getHandle(id);
  const bar = new cliProgress.SingleBar({
    format: "label [{bar}] {value}/{total} | labeled {labeled} rejected {rejected} failed {failed} | {spend}",
    hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  let outcome: "done" | "paused" = "done";
  const finished = handle.result().then(
    (s) => ({ summary: s as LabelSummary }),
    (err) => ({ error: err as Error }),
  );
  let result: { summary: LabelSummary } | { error: Error } | undefined;
  finished.then((r) => (result = r));
  while (!result) {
    // A query waits for a worker; while none is up (e.g. restarting), do not hold the loop.
    const p: LabelProgress | undefined = await client.connection.withDeadline(
      Date.now() + 2_000,
      () => handle.query(labelProgressQuery),
    ).catch(() => undefined);
    if (p && p.jobs > 0) {
      const payload = {
        labeled: p.counters.labeled,
        rejected: p.counters.rejected,
        failed: p.counters.failed,
        spend: `${p.counters.promptTokens + p.counters.completionTokens} tokens` +
          (p.counters.costUsd > 0 ? `, $${p.counters.costUsd.toFixed(4)}` : ""),
      };
      if (!started) bar.start(p.jobs, p.counters.done, payload);
      started = true;
      bar.update(p.counters.done, payload);
      if (p.phase === "paused") {
        bar.stop();
        console.error(
          `paused: ${p.pausedReason}. Raise the budget with the same command and a higher --budget-usd or ` +
            "--budget-tokens, or end it with --stop",
        );
        outcome = "paused";
        break;
      }
    }
    let tick: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([finished, new Promise((r) => (tick = setTimeout(r, opts.interval ?? 500)))]);
    clearTimeout(tick);
  }
  if (started && outcome === "done") bar.stop();
  if (outcome === "paused") return EXIT_PAUSED;
  const r = result ?? await finished;
  if ("error" in r) {
    const cause = (r.error as { cause?: Error }).cause;
    throw new CliError(`Labeling ${id} failed: ${cause?.message ?? r.error.message}`);
  }
  const report = await getJson<LabelReport>(store, parseRef(r.summary.reportRef)).catch(() => undefined);
  if (opts.json) {
    console.log(JSON.stringify({
      ...r.summary,
      rejections: report?.rejections ?? [],
      failures: report?.failures ?? [],
    }));
  } else console.log(formatLabelSummary(r.summary, report));
  return 0;
}

/** The human-readable summary (the report adds the rejection and failure lists). */
export function formatLabelSummary(s: LabelSummary, report?: LabelReport): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const jobs = s.records * s.variants;
  const lines = [
    `labeled ${s.labeled} of ${jobs} record-variant${
      jobs === 1 ? "" : "s"
    } (${s.records} records × ${s.variants}) → ` +
    `dataset ${s.out} with ${s.labeledRecords} records (${s.datasetRef.uri}), prompt ${s.promptVersion}`,
  ];
  const kinds = REPAIR_KINDS.filter((k) => (s.repairs[k] ?? 0) > 0).map((k) => `${k} ${s.repairs[k]}`);
  lines.push(`  repaired ${s.repaired}${kinds.length > 0 ? `: ${kinds.join(", ")}` : ""}`);
  lines.push(`  rejected ${s.rejected}${s.rejected > 0 ? ":" : ""}`);
  for (const r of report?.rejections ?? []) {
    lines.push(`    ${r.uuid} v${r.variant} after ${r.attempts} attempt${r.attempts === 1 ? "" : "s"}:`);
    for (const reason of r.reasons.slice(0, 5)) lines.push(`      ${reason}`);
    if (r.reasons.length > 5) lines.push(`      … and ${r.reasons.length - 5} more`);
  }
  lines.push(`  failed ${s.failed}${s.failed > 0 ? " (no result stored; a re-run retries them):" : ""}`);
  for (const f of report?.failures ?? []) lines.push(`    ${f.uuid} v${f.variant}: ${f.reason}`);
  if (s.skipped > 0) lines.push(`  skipped ${s.skipped} (stopped before they started)`);
  lines.push(
    `  tokens ${n(s.tokens.promptTokens)} prompt + ${
      n(s.tokens.completionTokens)
    } completion over ${s.attempts} calls; ` +
      `this run ${s.thisRun.calls} calls, ${n(s.thisRun.promptTokens)} + ${
        n(s.thisRun.completionTokens)
      } tokens`,
  );
  if (s.costUsd !== null) {
    lines.push(`  cost ≈ $${s.costUsd.toFixed(4)} (this run $${(s.thisRun.costUsd ?? 0).toFixed(4)})`);
  }
  lines.push(`  report ${s.reportRef.uri}`);
  return lines.join("\n");
}
