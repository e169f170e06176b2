/**
 * The durable training loop: `trainingRun` → `iteration` → `taskGroup` → `episode` workflows (the last two in
 * `episode.ts`). Deterministic wiring only; every model call is its own activity, every large value is a ref.
 *
 * History sizes stay bounded at the paper's scale (128 tasks × G = 48 per iteration): an iteration's history
 * grows with its tasks (one child per task group), a task group's with G (one child per episode), and an
 * episode continues as new once its history passes `cm2.episodeHistoryEvents` (or when the server suggests
 * it), carrying only where it stands (a state ref). No history grows with tasks × G.
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
  executeChild,
  patched,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
} from "@temporalio/workflow";
import type { RunConfig } from "../core/config.ts";
import { storeNames, workflowIds } from "../core/names.ts";
import { sampleTasks } from "../core/sampling.ts";
import { hyperparamsOf } from "../core/trainer_params.ts";
import type { Activities } from "../activities/mod.ts";
import type { DatasetSummary } from "../activities/dataset.ts";
import type { Ref } from "../core/ref.ts";
import type { TrainerActivities, UpdateResult } from "../core/trainer_contract.ts";
import { PUBLISH, STORE, TRAIN } from "./presets.ts";
import { boundedMap } from "./bounded_map.ts";
import { BENCHMARKS, DEFAULT_SETTINGS, type EvalPolicy } from "../core/eval.ts";
import { type EvalInput, evalWorkflow } from "./eval.ts";
import { type EpisodeOutcome, episodeWorkflow, taskGroupWorkflow } from "./episode.ts";

const store = proxyActivities<Activities>(STORE);
const publish = proxyActivities<Activities>(PUBLISH);

// ---------------------------------------------------------------------------------------------
// Iteration

/** Input of {@linkcode iterationWorkflow}. */
export interface IterationInput {
  runName: string;
  config: RunConfig;
  /** The same config in the store, for activities and episodes. */
  configRef: Ref;
  /** The store's canonical URL, as the worker that stored the config opened it (sent to the trainer). */
  storeUrl?: string;
  iteration: number;
  datasetRef: Ref;
  trainCount: number;
  valCount: number;
  /** The checkpoint the policy server currently serves (null = base model). */
  parent: Ref | null;
  policyVersion: number;
  /** Validation pass: roll out and score held-out records, no update. */
  validation?: boolean;
  /** The SFT checkpoint the policy started from (`trainer.init`): the KL reference of the update. */
  init?: Ref;
}

/** One line of metrics per iteration; small, kept in the run state and search attributes. */
export interface IterationSummary {
  iteration: number;
  validation: boolean;
  episodes: number;
  failed: number;
  meanReward: number;
  itemPassRate: number;
  judgeCalls: number;
  /** Verdicts answered by program checks, with no judge call (absent in summaries of older runs). */
  checkedVerdicts?: number;
  /** Judge answers asked again because they did not parse (absent in summaries of older runs). */
  judgeRetries?: number;
  /** Model calls that failed and were retried, by failure type (absent in summaries of older runs). */
  modelFaults?: Record<string, number>;
  simulatorCalls: number;
  replayHits: number;
  updateLoss: number | null;
  /**
   * Rollout correction of the update: mean importance weight over the tokens with serving log-probs and the
   * share of trajectories vetoed; absent when no token had serving log-probs (or in older runs).
   */
  rolloutCorrection?: { meanWeight: number; vetoedShare: number };
  checkpoint: Ref | null;
  policyVersion: number;
  metricsRef: Ref;
  seconds: number;
  /**
   * Seconds per phase (workflow time): rollouts (episodes, their judging included), rewards, update, publish.
   * Absent in summaries of older runs.
   */
  phases?: { rollouts: number; rewards: number; update: number; publish: number; eval?: number };
  /** The checkpoint's benchmark scores, when the run evaluates every `eval.every` iterations. */
  evals?: EvalScore[];
}

/** One benchmark category's score of a checkpoint evaluated during a run. */
export interface EvalScore {
  bench: string;
  category: string;
  tasks: number;
  score: number;
  ci95: [number, number];
  /** The evaluation's workflow. */
  workflowId: string;
}

/** Progress of an iteration, for `cm2 run watch`. */
export interface IterationProgress {
  iteration: number;
  phase: "episodes" | "rewards" | "update" | "publish" | "done";
  episodesDone: number;
  episodesTotal: number;
  failed: number;
}

/** Query: progress of an iteration. */
export const iterationProgressQuery = defineQuery<IterationProgress>("iterationProgress");

/** What every iteration (training or validation) of a run gets, given the stored config of this iteration. */
function commonInput(state: TrainingRunState, stored: { configRef: Ref; storeUrl?: string | undefined }) {
  return {
    runName: state.config.name,
    config: state.config,
    configRef: stored.configRef,
    ...(stored.storeUrl ? { storeUrl: stored.storeUrl } : {}),
    datasetRef: state.datasetRef!,
    trainCount: state.trainCount,
    valCount: state.valCount,
    ...(state.init ? { init: state.init } : {}),
  };
}

/** A validation pass (no update) of the run's current policy, kept in its recent summaries. */
async function validate(state: TrainingRunState, common: ReturnType<typeof commonInput>): Promise<void> {
  const it = state.iteration;
  const val = await executeChild(iterationWorkflow, {
    workflowId: workflowIds.validation(state.config.name, it),
    args: [{
      ...common,
      iteration: it,
      parent: state.checkpoint,
      policyVersion: state.policyVersion,
      validation: true,
    }],
  });
  state.recent = [...state.recent, val].slice(-RECENT);
}

/** Samples tasks, rolls out G episodes each, scores them, updates and publishes the policy. */
export async function iterationWorkflow(input: IterationInput): Promise<IterationSummary> {
  const started = Date.now();
  const { config, runName, iteration } = input;
  const validation = input.validation ?? false;
  const c = config.cm2;
  const tasks = validation
    ? Array.from({ length: Math.min(c.validationTasks, input.valCount) }, (_, i) => input.trainCount + i)
    : sampleTasks(c.seed, iteration, input.trainCount, c.tasksPerIteration);
  const progress: IterationProgress = {
    iteration,
    phase: "episodes",
    episodesDone: 0,
    episodesTotal: tasks.length * (validation ? c.validationSamples ?? c.groupSize : c.groupSize),
    failed: 0,
  };
  setHandler(iterationProgressQuery, () => progress);
  const outcomes = await rollOut(input, tasks, progress);
  const rolledOut = Date.now();

  progress.phase = "rewards";
  const groups = tasks.map((recordIndex, k) => ({
    taskIndex: k,
    recordIndex,
    episodes: outcomes.filter((o) => o.k === k).map((o) => o.stateRef),
  }));
  const scored = await store.computeRewards({
    configRef: input.configRef,
    runName,
    iteration,
    datasetRef: input.datasetRef,
    groups,
    validation,
  });
  const rewarded = Date.now();
  const update = !validation && scored.batchRef
    ? await updateAndPublish(input, scored.batchRef, progress)
    : null;
  const ended = Date.now();
  // Every `eval.every`-th checkpoint on public benchmarks, while it is the served policy (before the next
  // publish), so that its scores are part of this iteration's metrics.
  const every = config.eval?.every ?? 0;
  const evals = update && every > 0 && (iteration + 1) % every === 0 && patched("cm2-eval-every")
    ? await evaluateCheckpoint(input, update.result.checkpoint, update.version)
    : undefined;
  progress.phase = "done";
  const summary: Omit<IterationSummary, "metricsRef"> = {
    iteration,
    validation,
    episodes: outcomes.length,
    failed: progress.failed,
    meanReward: scored.meanReward,
    itemPassRate: scored.itemPassRate,
    judgeCalls: scored.judgeCalls,
    ...(scored.checkedVerdicts !== undefined ? { checkedVerdicts: scored.checkedVerdicts } : {}),
    ...(scored.judgeRetries !== undefined ? { judgeRetries: scored.judgeRetries } : {}),
    ...(scored.modelFaults !== undefined ? { modelFaults: scored.modelFaults } : {}),
    simulatorCalls: scored.simulatorCalls,
    replayHits: scored.replayHits,
    updateLoss: update ? update.result.metrics.loss : null,
    ...rolloutCorrectionOf(update?.result.metrics),
    checkpoint: update ? update.result.checkpoint : input.parent,
    policyVersion: update ? update.version : input.policyVersion,
    seconds: (ended - started) / 1000,
    phases: {
      rollouts: (rolledOut - started) / 1000,
      rewards: (rewarded - rolledOut) / 1000,
      update: update ? update.updateSeconds : 0,
      publish: update ? (ended - rewarded) / 1000 - update.updateSeconds : 0,
      ...(evals ? { eval: (Date.now() - ended) / 1000 } : {}),
    },
    ...(evals ? { evals } : {}),
  };
  const { metricsRef } = await store.recordMetrics({
    runName,
    summary,
    rewardsRef: scored.rewardsRef,
    // The batch the update trained on (advantages per step, tokens): the run viewer shows it per episode.
    ...(scored.batchRef ? { batchRef: scored.batchRef } : {}),
    configRef: input.configRef,
    updateMetrics: update ? update.result.metrics : null,
  });
  return { ...summary, metricsRef };
}

function rolloutCorrectionOf(
  m: UpdateResult["metrics"] | undefined,
): Pick<IterationSummary, "rolloutCorrection"> {
  if (m?.isMeanWeight == null || m.isVetoedShare == null) return {};
  return { rolloutCorrection: { meanWeight: m.isMeanWeight, vetoedShare: m.isVetoedShare } };
}

/** The iteration's rollouts: one task-group child per task (or, in histories from before task groups, one child per episode). */
async function rollOut(
  input: IterationInput,
  tasks: number[],
  progress: IterationProgress,
): Promise<(EpisodeOutcome & { k: number })[]> {
  const { config, runName, iteration } = input;
  const c = config.cm2;
  const prefix = input.validation ? "val" : "it";
  const rollout = {
    runName,
    configRef: input.configRef,
    judgeConcurrency: config.models.judge.concurrency,
    datasetRef: input.datasetRef,
  };
  if (patched("cm2-task-groups")) {
    // One child per task (a task group of G episodes): this history grows with tasks, not tasks × G.
    const perGroup = Math.min(c.groupSize, c.episodeConcurrency);
    const groupsInFlight = Math.max(1, Math.floor(c.episodeConcurrency / perGroup));
    const byGroup = await boundedMap(
      tasks.map((recordIndex, k) => ({ recordIndex, k })),
      groupsInFlight,
      async (t) => {
        const group = await executeChild(taskGroupWorkflow, {
          workflowId: workflowIds.group(runName, iteration, t.k, prefix),
          args: [{
            ...rollout,
            ...(input.policyVersion !== undefined ? { policyVersion: input.policyVersion } : {}),
            recordIndex: t.recordIndex,
            taskIndex: t.k,
            iteration,
            kind: prefix,
            groupSize: input.validation ? c.validationSamples ?? c.groupSize : c.groupSize,
            concurrency: perGroup,
            historyEvents: c.episodeHistoryEvents,
          }],
        });
        progress.episodesDone += group.length;
        progress.failed += group.filter((o) => !o.ok).length;
        return group.map((o) => ({ ...o, k: t.k }));
      },
    );
    return byGroup.flat();
  }
  const jobs = tasks.flatMap((recordIndex, k) =>
    Array.from(
      { length: c.groupSize },
      (_, g) => ({ recordIndex, k, id: workflowIds.episode(runName, iteration, k, g, prefix) }),
    )
  );
  return await boundedMap(jobs, c.episodeConcurrency, async (job) => {
    const outcome = await executeChild(episodeWorkflow, {
      workflowId: job.id,
      args: [{
        ...rollout,
        policyVersion: input.policyVersion,
        recordIndex: job.recordIndex,
        episodeId: job.id,
        groupKey: storeNames.group(runName, prefix, iteration, job.k),
      }],
    });
    progress.episodesDone++;
    if (!outcome.ok) progress.failed++;
    return { ...outcome, k: job.k };
  });
}

/** One policy update on the trainer's queue, then the new adapter made live and verified on the policy server. */
async function updateAndPublish(
  input: IterationInput,
  batch: Ref,
  progress: IterationProgress,
): Promise<{ result: UpdateResult; version: number; updateSeconds: number }> {
  const { config, runName, iteration } = input;
  progress.phase = "update";
  const t0 = Date.now();
  const trainer = proxyActivities<TrainerActivities>({
    ...TRAIN,
    taskQueue: config.trainer.taskQueue,
    heartbeatTimeout: `${config.trainer.heartbeatTimeoutS ?? 300} seconds`,
  });
  const result = await trainer.updatePolicy({
    runId: runName,
    iteration,
    batch,
    base: config.trainer.base,
    parent: input.parent,
    storeUrl: input.storeUrl ?? config.store.url,
    trainer: { ...hyperparamsOf(config), seed: config.cm2.seed + iteration },
    ...(input.init ? { init: input.init } : {}),
  });
  progress.phase = "publish";
  const updateSeconds = (Date.now() - t0) / 1000;
  const published = await publish.publishPolicy({
    configRef: input.configRef,
    checkpoint: result.checkpoint,
    version: result.version,
  });
  return { result, version: published.version, updateSeconds };
}

// ---------------------------------------------------------------------------------------------
// Training run

/** Hyperparameters that may change between iterations without invalidating the run. */
export interface SafeHyperparameters {
  lr?: number;
  klCoef?: number;
  groupSize?: number;
  tasksPerIteration?: number;
  iterations?: number;
  episodeConcurrency?: number;
}

/** The small explicit state carried across continue-as-new. */
export interface TrainingRunState {
  config: RunConfig;
  datasetRef: Ref | null;
  trainCount: number;
  valCount: number;
  /** What dataset preparation kept and left out (absent in runs started before it was counted). */
  dataset?: DatasetSummary;
  /** The SFT checkpoint of `trainer.init`, once resolved and served as version 0. */
  init?: Ref;
  iteration: number;
  policyVersion: number;
  checkpoint: Ref | null;
  /** The last few iteration summaries (bounded so the state stays small). */
  recent: IterationSummary[];
  paused: boolean;
  stopRequested: boolean;
}

/** Input of {@linkcode trainingRun}: a config, or the state from a continue-as-new. */
export type TrainingRunInput = { config: RunConfig; state?: TrainingRunState };

/** What `status` returns. */
export interface RunStatus {
  name: string;
  /** `pausing`: a pause was asked for and the current iteration is still running. */
  phase: "preparing" | "running" | "pausing" | "paused" | "stopping" | "completed" | "stopped";
  iteration: number;
  iterations: number;
  policyVersion: number;
  checkpoint: Ref | null;
  /** What dataset preparation kept and left out, once it ran. */
  dataset?: DatasetSummary;
  recent: IterationSummary[];
}

/** Final result of a training run. */
export interface TrainingRunResult {
  name: string;
  iterations: number;
  stopped: boolean;
  policyVersion: number;
  checkpoint: Ref | null;
  recent: IterationSummary[];
}

export const pauseSignal = defineSignal("pause");
export const resumeSignal = defineSignal("resume");
/** Stop after the current iteration finishes. */
export const stopSignal = defineSignal("stop");
export const statusQuery = defineQuery<RunStatus>("status");
/** Changes safe hyperparameters; they apply from the next iteration. Returns the new values. */
export const setHyperparametersUpdate = defineUpdate<SafeHyperparameters, [SafeHyperparameters]>(
  "setHyperparameters",
);

const RECENT = 20;

/** Validates a hyperparameter update; throws a non-retryable failure naming the field and value. */
export function checkHyperparameters(h: SafeHyperparameters): void {
  const positiveInts: (keyof SafeHyperparameters)[] = [
    "groupSize",
    "tasksPerIteration",
    "iterations",
    "episodeConcurrency",
  ];
  for (const k of positiveInts) {
    const v = h[k];
    if (v !== undefined && (!Number.isInteger(v) || v <= 0)) {
      throw ApplicationFailure.nonRetryable(
        `Hyperparameter ${k} must be a positive integer, got ${v}`,
        "InvalidInput",
      );
    }
  }
  for (const k of ["lr", "klCoef"] as const) {
    const v = h[k];
    if (v !== undefined && (!Number.isFinite(v) || v < 0)) {
      throw ApplicationFailure.nonRetryable(
        `Hyperparameter ${k} must be a non-negative number, got ${v}`,
        "InvalidInput",
      );
    }
  }
  const known = new Set(["lr", "klCoef", ...positiveInts]);
  for (const k of Object.keys(h)) {
    if (!known.has(k)) {
      throw ApplicationFailure.nonRetryable(
        `Hyperparameter ${k} cannot be changed while a run is going`,
        "InvalidInput",
      );
    }
  }
}

/** Applies checked hyperparameters to a config (a new object). */
export function applyHyperparameters(config: RunConfig, h: SafeHyperparameters): RunConfig {
  return {
    ...config,
    cm2: {
      ...config.cm2,
      ...(h.groupSize !== undefined ? { groupSize: h.groupSize } : {}),
      ...(h.tasksPerIteration !== undefined ? { tasksPerIteration: h.tasksPerIteration } : {}),
      ...(h.iterations !== undefined ? { iterations: h.iterations } : {}),
      ...(h.episodeConcurrency !== undefined ? { episodeConcurrency: h.episodeConcurrency } : {}),
    },
    trainer: {
      ...config.trainer,
      ...(h.lr !== undefined ? { lr: h.lr } : {}),
      ...(h.klCoef !== undefined ? { klCoef: h.klCoef } : {}),
    },
  };
}

/** The run's signals, status query and hyperparameter update, over its state and what the status shows. */
function handleControl(
  state: TrainingRunState,
  view: { phase: RunStatus["phase"]; waitingInPause: boolean },
): void {
  setHandler(pauseSignal, () => {
    state.paused = true;
  });
  setHandler(resumeSignal, () => {
    state.paused = false;
  });
  setHandler(stopSignal, () => {
    state.stopRequested = true;
  });
  setHandler(statusQuery, () => ({
    name: state.config.name,
    phase: state.stopRequested && view.phase === "running"
      ? "stopping"
      : state.paused && view.phase === "running"
      ? (view.waitingInPause ? "paused" : "pausing")
      : view.phase,
    iteration: state.iteration,
    iterations: state.config.cm2.iterations,
    policyVersion: state.policyVersion,
    checkpoint: state.checkpoint,
    ...(state.dataset ? { dataset: state.dataset } : {}),
    recent: state.recent,
  }));
  setHandler(setHyperparametersUpdate, (h) => {
    state.config = applyHyperparameters(state.config, h);
    return h;
  }, { validator: checkHyperparameters });
}

/**
 * Evaluates an iteration's checkpoint on the configured benchmarks (an `evalWorkflow` child per benchmark, on
 * the eval task queue) while it is served; each evaluation is filed under the run too (`runs/<run>/evals/…`).
 */
async function evaluateCheckpoint(
  input: IterationInput,
  checkpoint: Ref,
  version: number,
): Promise<EvalScore[]> {
  const { config, iteration: it } = input;
  const e = config.eval;
  const p = config.models.policy;
  const policy: EvalPolicy = {
    label: `${input.runName}-it-${it}`,
    identity: `checkpoint ${checkpoint.sha256}`,
    baseURL: p.baseURL,
    model: p.model,
    apiKeyEnv: p.apiKeyEnv ?? null,
    serve: { configRef: input.configRef, checkpoint, version },
    run: { name: input.runName, iteration: it },
  };
  const judge = config.models.judge;
  const scores: EvalScore[] = [];
  for (const bench of e.benchmarks) {
    const input: Omit<EvalInput, "policyKey"> = {
      policy,
      bench,
      categories: e.categories.length ? e.categories : [...BENCHMARKS[bench].categories],
      limit: e.limit,
      trials: e.trials ?? BENCHMARKS[bench].trials,
      concurrency: e.concurrency,
      seed: e.seed,
      settings: {
        ...DEFAULT_SETTINGS,
        maxTokens: e.maxTokens,
        maxSteps: e.maxSteps,
        user: bench === "tau2" ? { baseURL: judge.baseURL, model: judge.model } : null,
      },
      userApiKeyEnv: judge.apiKeyEnv ?? null,
      taskTimeoutS: e.taskTimeoutS,
    };
    const ids = await store.evalIds({ policy, bench, plan: { ...input, policy: null } });
    const run = await executeChild(evalWorkflow, {
      taskQueue: e.taskQueue,
      workflowId: ids.workflowId,
      args: [{ ...input, policyKey: ids.policyKey }],
    });
    scores.push(...run.summary.map((r) => ({
      bench: r.bench,
      category: r.category,
      tasks: r.tasks,
      score: r.score,
      ci95: r.ci95,
      workflowId: ids.workflowId,
    })));
  }
  return scores;
}

/** The whole run: prepares the dataset, then loops iterations; pause / resume / stop / status. */
export async function trainingRun(input: TrainingRunInput): Promise<TrainingRunResult> {
  const state: TrainingRunState = input.state ?? {
    config: input.config,
    datasetRef: null,
    trainCount: 0,
    valCount: 0,
    iteration: 0,
    policyVersion: 0,
    checkpoint: null,
    recent: [],
    paused: false,
    stopRequested: false,
  };
  const name = state.config.name;
  const view = {
    phase: (state.datasetRef ? "running" : "preparing") as RunStatus["phase"],
    waitingInPause: false,
  };
  handleControl(state, view);

  if (!state.datasetRef) {
    const ds = await store.prepareDataset({ config: state.config });
    state.datasetRef = ds.datasetRef;
    state.trainCount = ds.trainCount;
    state.valCount = ds.valCount;
    if (ds.summary) state.dataset = ds.summary;
    view.phase = "running";
  }
  upsertSearchAttributes({ Cm2RunName: [name], Cm2Status: ["running"] });
  if (state.config.trainer.init !== undefined && !state.init) {
    // RL from a cold-start SFT: its adapter is the policy before the first update (served as version 0) and
    // the KL reference of every update.
    const { configRef } = await store.putConfig({ config: state.config });
    const { init } = await store.resolveInit({ configRef });
    if (state.checkpoint === null) await publish.publishPolicy({ configRef, checkpoint: init, version: 0 });
    state.init = init;
  }

  let sinceStart = 0;
  while (state.iteration < state.config.cm2.iterations && !state.stopRequested) {
    if (state.paused) {
      upsertSearchAttributes({ Cm2Status: ["paused"] });
      view.waitingInPause = true;
      await condition(() => !state.paused || state.stopRequested);
      view.waitingInPause = false;
      upsertSearchAttributes({ Cm2Status: ["running"] });
      if (state.stopRequested) break;
    }
    const it = state.iteration;
    const common = commonInput(state, await store.putConfig({ config: state.config }));
    const ve = state.config.cm2.validationEvery;
    if (ve > 0 && it % ve === 0 && state.valCount > 0) await validate(state, common);
    const summary = await executeChild(iterationWorkflow, {
      workflowId: workflowIds.iteration(name, it),
      args: [{ ...common, iteration: it, parent: state.checkpoint, policyVersion: state.policyVersion }],
    });
    state.recent = [...state.recent, summary].slice(-RECENT);
    state.checkpoint = summary.checkpoint;
    state.policyVersion = summary.policyVersion;
    state.iteration = it + 1;
    upsertSearchAttributes({ Cm2Iteration: [state.iteration], Cm2MeanReward: [summary.meanReward] });
    sinceStart++;
    if (
      sinceStart >= state.config.cm2.continueAsNewEvery &&
      state.iteration < state.config.cm2.iterations && !state.stopRequested
    ) {
      await condition(allHandlersFinished);
      await continueAsNew<typeof trainingRun>({ config: state.config, state });
    }
  }
  const ve = state.config.cm2.validationEvery;
  if (ve > 0 && state.valCount > 0 && !state.stopRequested && patched("cm2-final-validation")) {
    // The policy of the last update is validated too, so the validation curve ends where training ended (with
    // `iterations: 0`, this is a validation of the initial policy alone).
    await validate(state, commonInput(state, await store.putConfig({ config: state.config })));
  }
  view.phase = state.stopRequested ? "stopped" : "completed";
  upsertSearchAttributes({ Cm2Status: [view.phase] });
  await condition(allHandlersFinished);
  return {
    name,
    iterations: state.iteration,
    stopped: state.stopRequested,
    policyVersion: state.policyVersion,
    checkpoint: state.checkpoint,
    recent: state.recent,
  };
}
