/**
 * The durable labeling run `labelDataset`: one labeler call per activity over every (record,
 * variant) of a stored dataset, a sliding window of calls in flight, a spend budget that pauses the
 * run, and continue-as-new every few hundred record-variants. Results live in the store under
 * first-writer-wins pointers (see `activities/labeling.ts`), so a resumed, retried or re-run
 * labeling never pays twice for a finished record-variant. Deterministic wiring only.
 *
 * @module
 */
import {
  allHandlersFinished,
  ApplicationFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  proxyActivities,
  setHandler,
} from "@temporalio/workflow";
import type { RunConfig } from "../core/config.ts";
import type { Activities } from "../activities/mod.ts";
import type { LabelSummary } from "../activities/labeling.ts";
import type { Ref } from "../core/ref.ts";
import { workflowIds } from "../core/names.ts";
import { BULK, LLM, STORE } from "./presets.ts";
import { boundedMap } from "./bounded_map.ts";

const store = proxyActivities<Activities>(STORE);
const llm = proxyActivities<Activities>(LLM);
const bulk = proxyActivities<Activities>(BULK);

/** Workflow id of the labeling run that writes dataset `out`. */
export function labelWorkflowId(out: string): string {
  return workflowIds.label(out);
}

/** A spend limit for this run's labeler calls; `null` or absent means no limit. */
export interface LabelBudget {
  usd?: number | null;
  tokens?: number | null;
}

/** Input of {@linkcode labelDataset}. */
export interface LabelRunInput {
  config: RunConfig;
  /** The input dataset: `datasets/<dataset>` in the store. */
  dataset: string;
  /** The output dataset name. */
  out: string;
  /** Fixed by the client at start, so a run never mixes prompt versions. */
  promptVersion: string;
  variants: number;
  /** Label only the first `limit` records. */
  limit?: number;
  concurrency: number;
  maxAttempts: number;
  weightRepairTolerance: number;
  budget: LabelBudget;
  /** Record-variants per workflow execution before continue-as-new; default {@linkcode LABEL_JOBS_PER_RUN}. */
  jobsPerRun?: number;
  /** Set by continue-as-new. */
  state?: LabelRunState;
}

/** Counters of a labeling run (this run's work; the final summary is recomputed from the store). */
export interface LabelCounters {
  done: number;
  labeled: number;
  repaired: number;
  rejected: number;
  failed: number;
  /** Finished before this run (no call made). */
  cached: number;
  calls: number;
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
}

/** The small state carried across continue-as-new. */
export interface LabelRunState {
  configRef: Ref;
  datasetRef: Ref;
  /** Records considered (after `limit`). */
  count: number;
  /** Next job (record-variant) to start: job j is record ⌊j / variants⌋, variant j mod variants. */
  next: number;
  counters: LabelCounters;
  budget: LabelBudget;
  failures: { index: number; variant: number; reason: string }[];
  failedUnlisted: number;
  stopRequested: boolean;
}

/** What `labelProgress` returns. */
export interface LabelProgress {
  phase: "preparing" | "labeling" | "paused" | "stopping" | "finishing" | "done";
  out: string;
  jobs: number;
  counters: LabelCounters;
  budget: LabelBudget;
  /** Why the run is paused (budget reached), when it is. */
  pausedReason?: string;
  summary?: LabelSummary;
}

/** Query: progress of a labeling run. */
export const labelProgressQuery = defineQuery<LabelProgress>("labelProgress");
/** Update: change the budget (raise it to resume a paused run); returns the budget now in force. */
export const setLabelBudgetUpdate = defineUpdate<LabelBudget, [LabelBudget]>("setLabelBudget");
/** Signal: start no new record-variant; finish those in flight and write the output. */
export const stopLabelingSignal = defineSignal("stopLabeling");

/** Record-variants per workflow execution before continue-as-new (keeps each history small). */
export const LABEL_JOBS_PER_RUN = 300;
/** Failures listed by name in the report; more are only counted. */
const MAX_LISTED_FAILURES = 200;

/** Checks a budget update; throws a non-retryable failure naming the field and value. */
export function checkLabelBudget(b: LabelBudget): void {
  for (const k of Object.keys(b)) {
    if (k !== "usd" && k !== "tokens") {
      throw ApplicationFailure.nonRetryable(`Unknown budget field ${k}`, "InvalidInput");
    }
  }
  for (const k of ["usd", "tokens"] as const) {
    const v = b[k];
    if (v !== undefined && v !== null && (!Number.isFinite(v) || v < 0)) {
      throw ApplicationFailure.nonRetryable(
        `Budget ${k} must be a non-negative number, got ${v}`,
        "InvalidInput",
      );
    }
  }
}

/** Why spend `c` is over `budget`, or undefined when it is not. */
export function overBudget(
  c: Pick<LabelCounters, "costUsd" | "promptTokens" | "completionTokens">,
  budget: LabelBudget,
): string | undefined {
  if (budget.usd !== undefined && budget.usd !== null && c.costUsd >= budget.usd) {
    return `spent $${c.costUsd.toFixed(4)} of a $${budget.usd} budget`;
  }
  const tokens = c.promptTokens + c.completionTokens;
  if (budget.tokens !== undefined && budget.tokens !== null && tokens >= budget.tokens) {
    return `spent ${tokens} tokens of a ${budget.tokens}-token budget`;
  }
  return undefined;
}

function emptyCounters(): LabelCounters {
  return {
    done: 0,
    labeled: 0,
    repaired: 0,
    rejected: 0,
    failed: 0,
    cached: 0,
    calls: 0,
    promptTokens: 0,
    completionTokens: 0,
    costUsd: 0,
  };
}

/**
 * Labels a stored dataset into a new dataset version; see the module doc. Long because it is the workflow's
 * whole deterministic script (signals, budget, batches, continue-as-new) in the order its history records it.
 */
export async function labelDataset(input: LabelRunInput): Promise<LabelSummary> {
  let state: LabelRunState | undefined = input.state;
  let phase: LabelProgress["phase"] = state ? "labeling" : "preparing";
  const done: { summary?: LabelSummary } = {};
  let pendingStop = false;
  let pendingBudget: LabelBudget = input.budget;
  const budget = () => state?.budget ?? pendingBudget;
  const progress = (): LabelProgress => {
    const counters = state?.counters ?? emptyCounters();
    const reason = overBudget(counters, budget());
    const stopping = state?.stopRequested ?? pendingStop;
    const p: LabelProgress = {
      phase: phase === "labeling" && stopping
        ? "stopping"
        : phase === "labeling" && reason
        ? "paused"
        : phase,
      out: input.out,
      jobs: (state?.count ?? 0) * input.variants,
      counters,
      budget: budget(),
    };
    if (reason && phase === "labeling" && !stopping) p.pausedReason = reason;
    if (done.summary) p.summary = done.summary;
    return p;
  };
  setHandler(labelProgressQuery, progress);
  setHandler(setLabelBudgetUpdate, (b) => {
    const next = { ...budget(), ...b };
    if (state) state.budget = next;
    else pendingBudget = next;
    return next;
  }, { validator: checkLabelBudget });
  setHandler(stopLabelingSignal, () => {
    if (state) state.stopRequested = true;
    else pendingStop = true;
  });

  if (!state) {
    const { configRef } = await store.putConfig({ config: input.config });
    const ds = await store.labelPrepare({ dataset: input.dataset });
    state = {
      configRef,
      datasetRef: ds.datasetRef,
      count: Math.min(ds.count, input.limit ?? ds.count),
      next: 0,
      counters: emptyCounters(),
      budget: pendingBudget,
      failures: [],
      failedUnlisted: 0,
      stopRequested: pendingStop,
    };
    phase = "labeling";
  }
  const s = state;
  const total = s.count * input.variants;
  const common = {
    configRef: s.configRef,
    datasetRef: s.datasetRef,
    maxAttempts: input.maxAttempts,
    promptVersion: input.promptVersion,
    weightRepairTolerance: input.weightRepairTolerance,
  };
  const over = () => overBudget(s.counters, s.budget);

  const runJob = async (job: number): Promise<void> => {
    if (s.stopRequested) return;
    const index = Math.floor(job / input.variants);
    const variant = job % input.variants;
    const c = s.counters;
    try {
      for (let attempt = 1; attempt <= input.maxAttempts; attempt++) {
        if (over()) {
          if (attempt === 1) {
            // A finished record-variant costs nothing: look it up even while paused.
            const hit = await store.labelAttempt({ ...common, index, variant, attempt, lookupOnly: true });
            if (hit.final && hit.outcome) {
              c.done++;
              c.cached++;
              if (hit.outcome.status === "labeled") c.labeled++;
              else c.rejected++;
              return;
            }
          }
          await condition(() => !over() || s.stopRequested);
          if (s.stopRequested) return;
        }
        const r = await llm.labelAttempt({ ...common, index, variant, attempt });
        if (r.fresh) {
          c.calls++;
          c.promptTokens += r.usage.promptTokens;
          c.completionTokens += r.usage.completionTokens;
          c.costUsd += r.costUsd;
        }
        if (r.final && r.outcome) {
          c.done++;
          if (r.outcome.cached) c.cached++;
          if (r.outcome.status === "labeled") {
            c.labeled++;
            if (Object.keys(r.outcome.repairs).length > 0) c.repaired++;
          } else c.rejected++;
          return;
        }
      }
    } catch (err) {
      c.done++;
      c.failed++;
      const reason = err instanceof Error
        ? (err.cause instanceof Error ? err.cause.message : err.message)
        : String(err);
      if (s.failures.length < MAX_LISTED_FAILURES) s.failures.push({ index, variant, reason });
      else s.failedUnlisted++;
    }
  };

  const end = Math.min(total, s.next + Math.max(1, input.jobsPerRun ?? LABEL_JOBS_PER_RUN));
  const jobs = Array.from({ length: end - s.next }, (_, k) => s.next + k);
  await boundedMap(jobs, input.concurrency, runJob);
  s.next = end;
  if (s.next < total && !s.stopRequested) {
    await condition(allHandlersFinished);
    await continueAsNew<typeof labelDataset>({ ...input, state: s });
  }

  phase = "finishing";
  const finished = await bulk.labelFinish({
    configRef: s.configRef,
    datasetRef: s.datasetRef,
    dataset: input.dataset,
    out: input.out,
    promptVersion: input.promptVersion,
    variants: input.variants,
    count: s.count,
    failures: s.failures,
    failedUnlisted: s.failedUnlisted,
    thisRun: {
      calls: s.counters.calls,
      promptTokens: s.counters.promptTokens,
      completionTokens: s.counters.completionTokens,
      costUsd: s.counters.costUsd,
    },
  });
  done.summary = finished.summary;
  phase = "done";
  await condition(allHandlersFinished);
  return finished.summary;
}
