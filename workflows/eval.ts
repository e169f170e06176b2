/**
 * `evalWorkflow` (id `eval/<policy>/<bench>/<digest>`): one policy on one benchmark's categories. It makes the
 * policy live (`evalServe`), lists each category's tasks, picks the `--limit` subset (seeded, so the same tasks
 * every time), and runs one `evalTask` activity per (task, trial) with at most `concurrency` in flight. A task
 * that already has a stored result answers from the store; one whose endpoint stays unreachable after its
 * retries is a failure with its reason (score 0), never dropped. Ends by storing its summary.
 *
 * @module
 */
import {
  ActivityFailure,
  ApplicationFailure,
  defineQuery,
  executeChild,
  proxyActivities,
  setHandler,
  workflowInfo,
} from "@temporalio/workflow";
import type { EvalActivities, EvalTaskOutput } from "../activities/eval.ts";
import {
  type Bench,
  type EvalPolicy,
  type EvalResult,
  type EvalSettings,
  selectTasks,
  summarize,
  type SummaryRow,
} from "../core/eval.ts";
import { boundedMap } from "./bounded_map.ts";
import type { Activities } from "../activities/mod.ts";
import type { RunConfig } from "../core/config.ts";
import { JUDGE_PROMPT_VERSION } from "../core/judge.ts";
import { workflowIds } from "../core/names.ts";
import type { Ref } from "../core/ref.ts";
import type { iterationWorkflow } from "./training.ts";
import { NON_RETRYABLE, PUBLISH, STORE } from "./presets.ts";

/** Input of {@linkcode evalWorkflow}. */
export interface EvalInput {
  policy: EvalPolicy;
  bench: Bench;
  categories: string[];
  /** Tasks per category (a fixed, seeded subset); null: all. */
  limit: number | null;
  trials: number;
  concurrency: number;
  seed: number;
  settings: EvalSettings;
  userApiKeyEnv: string | null;
  /** Wall-clock cap of one trial (seconds). */
  taskTimeoutS: number;
  /** The policy's key in store names (`policyKey`, computed by the client: workflows have no hash). */
  policyKey: string;
  /**
   * The `checklist` benchmark: a validation pass of `config` (its dataset's held-out records, its judge and
   * simulator) run as `run/<runName>/val-0`, with the policy at `version` (checkpoint `parent`).
   */
  checklist?: { config: RunConfig; runName: string; parent: Ref | null; version: number; benchmark: string };
}

/** Progress, as the `progress` query answers it. */
export interface EvalProgress {
  total: number;
  done: number;
  failed: number;
  reused: number;
  phase: "serving" | "listing" | "running" | "done";
}

/** The workflow's result (also stored under `evals/<policy>/<bench>/runs/<workflow id digest>`). */
export interface EvalRun {
  schema: "cm2.eval-run/v1";
  policy: { label: string; identity: string; key: string };
  bench: Bench;
  categories: string[];
  limit: number | null;
  trials: number;
  settings: EvalSettings;
  /** Every (task, trial): its stored name and what it scored. */
  results: (EvalTaskOutput | FailedTrial)[];
  summary: SummaryRow[];
}

/** A (task, trial) whose activity failed for good: counted as 0 with its reason. */
export interface FailedTrial {
  name: null;
  bench: Bench;
  version: string;
  category: string;
  task: string;
  trial: number;
  score: 0;
  passed: false;
  error: { kind: string; message: string };
  tokens: { prompt: 0; completion: 0 };
  steps: 0;
  seconds: 0;
  reused: false;
}

export const evalProgressQuery = defineQuery<EvalProgress>("progress");

const store = proxyActivities<EvalActivities>(STORE);
const serve = proxyActivities<EvalActivities>(PUBLISH);
const listing = proxyActivities<EvalActivities>({ ...STORE, startToCloseTimeout: "10 minutes" });

/** One policy on one benchmark (see the module doc). */
export async function evalWorkflow(input: EvalInput): Promise<EvalRun> {
  const progress: EvalProgress = { total: 0, done: 0, failed: 0, reused: 0, phase: "serving" };
  setHandler(evalProgressQuery, () => progress);
  const run = proxyActivities<EvalActivities>({
    startToCloseTimeout: `${input.taskTimeoutS + 120} seconds`,
    heartbeatTimeout: "60 seconds",
    retry: {
      initialInterval: "5 seconds",
      backoffCoefficient: 2,
      maximumInterval: "2 minutes",
      maximumAttempts: 6,
      nonRetryableErrorTypes: [...NON_RETRYABLE, "EvalVenvMissing", "PolicyChanged"],
    },
  });
  const { model } = await serve.evalServe({ policy: input.policy });
  if (input.bench === "checklist") return await finish(input, progress, await checklistPass(input, progress));
  progress.phase = "listing";
  const jobs: { category: string; version: string; task: string; trial: number }[] = [];
  for (const category of input.categories) {
    const { version, tasks } = await listing.evalTasks({ bench: input.bench, category });
    for (const task of selectTasks(tasks, input.limit, input.seed)) {
      for (let trial = 0; trial < input.trials; trial++) jobs.push({ category, version, task, trial });
    }
  }
  progress.total = jobs.length;
  progress.phase = "running";
  const results = await boundedMap(jobs, input.concurrency, async (job) => {
    try {
      const r = await run.evalTask({
        policy: input.policy,
        model,
        bench: input.bench,
        ...job,
        settings: input.settings,
        userApiKeyEnv: input.userApiKeyEnv,
        timeoutS: input.taskTimeoutS,
      });
      progress.done++;
      if (r.error) progress.failed++;
      if (r.reused) progress.reused++;
      return r;
    } catch (err) {
      const cause = err instanceof ActivityFailure ? err.cause : err;
      if (cause instanceof ApplicationFailure && cause.type === "EvalVenvMissing") throw cause;
      progress.done++;
      progress.failed++;
      const failed: FailedTrial = {
        name: null,
        bench: input.bench,
        ...job,
        score: 0,
        passed: false,
        error: {
          kind: cause instanceof ApplicationFailure ? cause.type ?? "failure" : "failure",
          message: cause instanceof Error ? cause.message.slice(0, 500) : String(cause),
        },
        tokens: { prompt: 0, completion: 0 },
        steps: 0,
        seconds: 0,
        reused: false,
      };
      return failed;
    }
  });
  return await finish(input, progress, results);
}

/**
 * The `checklist` benchmark: the validation pass (once per run name: a rerun reads the stored one), then its
 * episodes as results under content keys.
 */
async function checklistPass(input: EvalInput, progress: EvalProgress): Promise<EvalTaskOutput[]> {
  const c = input.checklist;
  if (!c) {
    throw ApplicationFailure.nonRetryable("The checklist benchmark needs its run config", "InvalidInput");
  }
  const trials = input.trials;
  const orch = proxyActivities<Activities>({ ...STORE, taskQueue: c.config.temporal.taskQueue });
  let { metricsRef } = await store.evalChecklistKnown({ runName: c.runName });
  progress.phase = "running";
  if (!metricsRef) {
    const ds = await orch.prepareDataset({ config: c.config });
    progress.total = Math.min(input.limit ?? ds.valCount, ds.valCount) * trials;
    const config: RunConfig = {
      ...c.config,
      name: c.runName,
      cm2: { ...c.config.cm2, validationTasks: input.limit ?? ds.valCount, validationSamples: trials },
    };
    const stored = await orch.putConfig({ config });
    const summary = await executeChild<typeof iterationWorkflow>("iterationWorkflow", {
      taskQueue: c.config.temporal.taskQueue,
      workflowId: workflowIds.validation(c.runName, 0),
      args: [{
        runName: c.runName,
        config,
        configRef: stored.configRef,
        storeUrl: stored.storeUrl,
        iteration: 0,
        datasetRef: ds.datasetRef,
        trainCount: ds.trainCount,
        valCount: ds.valCount,
        parent: c.parent,
        policyVersion: c.version,
        validation: true,
      }],
    });
    metricsRef = summary.metricsRef;
  }
  const results = await store.evalChecklistResults({
    metricsRef,
    policy: input.policy,
    settings: input.settings,
    version: `${c.benchmark} ${JUDGE_PROMPT_VERSION}`,
  });
  progress.total = progress.done = results.length;
  progress.failed = results.filter((r) => r.error).length;
  progress.reused = results.filter((r) => r.reused).length;
  return results;
}

/** Summarises and stores the evaluation's record (under the policy, and under its run for a checkpoint). */
async function finish(
  input: EvalInput,
  progress: EvalProgress,
  results: (EvalTaskOutput | FailedTrial)[],
): Promise<EvalRun> {
  progress.phase = "done";
  const summary = summarize(
    results.map((r) => ({ ...r, policy: input.policy, settings: input.settings, detail: {} }) as EvalResult),
    input.seed,
  );
  const record: EvalRun = {
    schema: "cm2.eval-run/v1",
    policy: { label: input.policy.label, identity: input.policy.identity, key: input.policyKey },
    bench: input.bench,
    categories: input.categories,
    limit: input.limit,
    trials: input.trials,
    settings: input.settings,
    results,
    summary,
  };
  const id = workflowInfo().workflowId.split("/").at(-1);
  await store.evalRecord({ name: `evals/${input.policyKey}/${input.bench}/runs/${id}`, record });
  const of = input.policy.run;
  if (of) {
    await store.evalRecord({ name: `runs/${of.name}/evals/it-${of.iteration}/${input.bench}-${id}`, record });
  }
  return record;
}
