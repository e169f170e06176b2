/**
 * The durable per-record LLM stage `recordStage`: one model call per activity over every record of a stored
 * dataset, for a stage kind (`filter`: the LLM quality judge; `compress`: CoT compression; see
 * `core/record_stage.ts`). It runs on labeling's principles: a sliding window of calls in flight, results
 * under first-writer-wins pointers read before any call (`activities/record_stage.ts`), a token/USD budget
 * that pauses the run until an update raises it, a stop signal that writes the output with what is done,
 * and continue-as-new every few hundred records. Workflow ids `filter/<out>` and `compress/<out>`.
 * Deterministic wiring only.
 *
 * @module
 */
import { defineQuery, defineSignal, defineUpdate, setHandler } from "@temporalio/workflow";
import { allHandlersFinished, condition, continueAsNew, proxyActivities } from "@temporalio/workflow";
import type { Activities } from "../activities/mod.ts";
import type { StageOutcome, StageSummary } from "../activities/record_stage.ts";
import type { RunConfig } from "../core/config.ts";
import type { StageKind, StageParams } from "../core/record_stage.ts";
import type { Ref } from "../core/ref.ts";
import { boundedMap } from "./bounded_map.ts";
import { checkLabelBudget, type LabelBudget, overBudget } from "./labeling.ts";
import { BULK, LLM, STORE } from "./presets.ts";

const quick = proxyActivities<Activities>(STORE);
const calls = proxyActivities<Activities>(LLM);
const bulk = proxyActivities<Activities>(BULK);

/** Workflow id of the `kind` stage that writes dataset `out`: `filter/<out>` or `compress/<out>`. */
export function stageWorkflowId(kind: StageKind, out: string): string {
  return `${kind}/${out}`;
}

/** Input of {@linkcode recordStage}. */
export interface StageRunInput {
  kind: StageKind;
  config: RunConfig;
  /** The input dataset, `datasets/<dataset>`. */
  dataset: string;
  /** The output dataset name. */
  out: string;
  /** Fixed by the client at start (the stage's version for `params`), so a run never mixes versions. */
  promptVersion: string;
  params: StageParams;
  /** Only the first `limit` records. */
  limit?: number;
  concurrency: number;
  maxAttempts: number;
  budget: LabelBudget;
  /** Records per workflow execution before continue-as-new; default {@linkcode STAGE_RECORDS_PER_RUN}. */
  recordsPerRun?: number;
  /** Carried by continue-as-new. */
  state?: StageRunState;
}

/** What this run did so far (the summary is recomputed from the store at the end). */
export interface StageCounters {
  /** Calls this run paid for, their tokens and their cost at the labeler prices. */
  calls: number;
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
  /** Records finished or failed for good. */
  done: number;
  /** Finished records per stage status. */
  statuses: Record<string, number>;
  /** Records whose calls failed for good (no result stored). */
  failed: number;
  /** Finished before this run: no call made. */
  cached: number;
}

/** The small state carried across continue-as-new. */
export interface StageRunState {
  configRef: Ref;
  datasetRef: Ref;
  count: number;
  /** The next record to start. */
  next: number;
  counters: StageCounters;
  budget: LabelBudget;
  failures: { index: number; reason: string }[];
  failedUnlisted: number;
  stopRequested: boolean;
}

/** What `stageProgress` returns. */
export interface StageProgress {
  kind: StageKind;
  phase: "preparing" | "running" | "paused" | "stopping" | "finishing" | "done";
  out: string;
  records: number;
  counters: StageCounters;
  budget: LabelBudget;
  /** Why the run waits (its budget is spent), while paused. */
  pausedReason?: string;
  summary?: StageSummary;
}

/** Query: progress of a stage run. */
export const stageProgressQuery = defineQuery<StageProgress>("stageProgress");
/** Update: change the budget (raise it to resume a paused run); returns the budget now in force. */
export const setStageBudgetUpdate = defineUpdate<LabelBudget, [LabelBudget]>("setStageBudget");
/** Signal: start no new record; finish those in flight and write the output. */
export const stopStageSignal = defineSignal("stopStage");

/** Records per workflow execution before continue-as-new (keeps each history small). */
export const STAGE_RECORDS_PER_RUN = 300;
/** Failures listed in the report; more are only counted. */
const LISTED_FAILURES = 200;

function zeroCounters(): StageCounters {
  const spend = { calls: 0, promptTokens: 0, completionTokens: 0, costUsd: 0 };
  return { ...spend, done: 0, statuses: {}, failed: 0, cached: 0 };
}

function failureText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  return err.cause instanceof Error ? err.cause.message : err.message;
}

/**
 * Runs a stage over a stored dataset into a new dataset version; see the module doc. Long because it is the
 * workflow's whole deterministic script (handlers, budget, window, continue-as-new) in history order.
 */
export async function recordStage(input: StageRunInput): Promise<StageSummary> {
  const before = { budget: input.budget, stop: false }; // handler effects that arrive while preparing
  let st: StageRunState | undefined = input.state;
  let phase: StageProgress["phase"] = st ? "running" : "preparing";
  const result: { summary?: StageSummary } = {};
  const budget = () => st?.budget ?? before.budget;
  const stopping = () => st?.stopRequested ?? before.stop;
  const spentOut = () => (st ? overBudget(st.counters, st.budget) : undefined);

  setHandler(stageProgressQuery, (): StageProgress => {
    const paused = phase === "running" && !stopping() ? spentOut() : undefined;
    const shown = phase !== "running" ? phase : stopping() ? "stopping" : paused ? "paused" : "running";
    return {
      kind: input.kind,
      phase: shown,
      out: input.out,
      records: st?.count ?? 0,
      counters: st?.counters ?? zeroCounters(),
      budget: budget(),
      ...(paused ? { pausedReason: paused } : {}),
      ...(result.summary ? { summary: result.summary } : {}),
    };
  });
  setHandler(setStageBudgetUpdate, (change) => {
    const merged = { ...budget(), ...change };
    if (st) st.budget = merged;
    else before.budget = merged;
    return merged;
  }, { validator: checkLabelBudget });
  setHandler(stopStageSignal, () => {
    if (st) st.stopRequested = true;
    else before.stop = true;
  });

  if (!st) {
    const { configRef } = await quick.putConfig({ config: input.config });
    const prepared = await quick.stagePrepare({
      dataset: input.dataset,
      kind: input.kind,
      params: input.params,
    });
    st = {
      configRef,
      datasetRef: prepared.datasetRef,
      count: input.limit === undefined ? prepared.count : Math.min(prepared.count, input.limit),
      next: 0,
      counters: zeroCounters(),
      budget: before.budget,
      failures: [],
      failedUnlisted: 0,
      stopRequested: before.stop,
    };
    phase = "running";
  }
  const run = st;
  const tally = run.counters;
  const ask = {
    kind: input.kind,
    configRef: run.configRef,
    datasetRef: run.datasetRef,
    maxAttempts: input.maxAttempts,
    promptVersion: input.promptVersion,
    params: input.params,
  };
  const finished = (o: StageOutcome) => {
    tally.done++;
    if (o.cached) tally.cached++;
    tally.statuses[o.status] = (tally.statuses[o.status] ?? 0) + 1;
  };

  const oneRecord = async (index: number): Promise<void> => {
    if (run.stopRequested) return;
    try {
      for (let attempt = 1; attempt <= input.maxAttempts; attempt++) {
        if (overBudget(tally, run.budget)) {
          // A finished record, or one that needs no call, costs nothing: count it even while paused.
          const known = attempt === 1
            ? await quick.stageAttempt({ ...ask, index, attempt, lookupOnly: true })
            : undefined;
          if (known?.outcome) return finished(known.outcome);
          await condition(() => run.stopRequested || !overBudget(tally, run.budget));
          if (run.stopRequested) return;
        }
        const r = await calls.stageAttempt({ ...ask, index, attempt });
        if (r.fresh) {
          tally.calls++;
          tally.promptTokens += r.usage.promptTokens;
          tally.completionTokens += r.usage.completionTokens;
          tally.costUsd += r.costUsd;
        }
        if (r.outcome) return finished(r.outcome);
      }
    } catch (err) {
      tally.done++;
      tally.failed++;
      if (run.failures.length >= LISTED_FAILURES) run.failedUnlisted++;
      else run.failures.push({ index, reason: failureText(err) });
    }
  };

  const chunkEnd = Math.min(run.count, run.next + Math.max(1, input.recordsPerRun ?? STAGE_RECORDS_PER_RUN));
  const chunk: number[] = [];
  for (let i = run.next; i < chunkEnd; i++) chunk.push(i);
  await boundedMap(chunk, input.concurrency, oneRecord);
  run.next = chunkEnd;
  if (run.next < run.count && !run.stopRequested) {
    await condition(allHandlersFinished);
    return await continueAsNew<typeof recordStage>({ ...input, state: run });
  }

  phase = "finishing";
  const { summary: written } = await bulk.stageFinish({
    kind: input.kind,
    configRef: run.configRef,
    datasetRef: run.datasetRef,
    dataset: input.dataset,
    out: input.out,
    promptVersion: input.promptVersion,
    params: input.params,
    count: run.count,
    failures: run.failures,
    failedUnlisted: run.failedUnlisted,
    thisRun: {
      calls: tally.calls,
      promptTokens: tally.promptTokens,
      completionTokens: tally.completionTokens,
      costUsd: tally.costUsd,
    },
  });
  result.summary = written;
  phase = "done";
  await condition(allHandlersFinished);
  return written;
}
