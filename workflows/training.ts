/**
 * The durable training loop: `trainingRun` → `iteration` → `taskGroup` → `episode` workflows. Deterministic
 * wiring only; every model call is its own activity, every large value is a store ref.
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
  proxyLocalActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from "@temporalio/workflow";
import type { RunConfig } from "../core/config.ts";
import { storeNames, workflowIds } from "../core/names.ts";
import { sampleTasks } from "../core/sampling.ts";
import { hyperparamsOf } from "../core/trainer_params.ts";
import type { Activities } from "../activities/mod.ts";
import type { EpisodeStep } from "../activities/episode.ts";
import type { Ref } from "../core/ref.ts";
import type { TrainerActivities, UpdateResult } from "../core/trainer_contract.ts";
import { LLM, LOCAL_STORE, PUBLISH, STORE, TRAIN } from "./presets.ts";

const store = proxyActivities<Activities>(STORE);
const local = proxyLocalActivities<Activities>(LOCAL_STORE);
const llm = proxyActivities<Activities>(LLM);
const publish = proxyActivities<Activities>(PUBLISH);

// ---------------------------------------------------------------------------------------------
// Episode

/** What an episode and its task group both take: the run, the task's record, the policy to roll out. */
export interface RolloutInput {
  runName: string;
  /** The run config in the store (activities load it; keeps every activity payload small). */
  configRef: Ref;
  /** Judge calls in flight per episode. */
  judgeConcurrency: number;
  /** The policy version the rollouts must be served by (0 = base model). */
  policyVersion?: number;
  datasetRef: Ref;
  recordIndex: number;
}

/** Input of {@linkcode episodeWorkflow}. */
export interface EpisodeInput extends RolloutInput {
  episodeId: string;
  /** Name prefix in the store shared by the G episodes of a group (simulator consistency cache). */
  groupKey: string;
  /** Continue as new once the history has this many events (default {@linkcode EPISODE_HISTORY_EVENTS}). */
  historyEvents?: number;
  /** Where a continued episode stands (set by continue-as-new; absent at the start). */
  resume?: EpisodeStep | LegacyStep;
}

/**
 * Events after which an episode continues as new: far below Temporal's 10,240-event warning, so one step's
 * events (a policy call, its tools, a judge round with its calls) always fit after the check.
 */
export const EPISODE_HISTORY_EVENTS = 4_000;

/** What an episode hands back: a ref to its final state plus small facts. */
export interface EpisodeOutcome {
  episodeId: string;
  stateRef: Ref;
  ok: boolean;
  endReason: string;
  steps: number;
  turns: number;
}

/**
 * An episode step as activities before the one-engine redesign returned it (`next` plus plan refs). Histories
 * recorded then replay through {@linkcode stepOf}, and their plan refs are passed on to the activities.
 */
interface LegacyStep {
  stateRef: Ref;
  next: "policy" | "tools" | "judge" | "end";
  planRef?: Ref;
  simulate?: number[];
  tasksRef?: Ref;
  tasks?: number[];
  end?: EpisodeStep["end"];
}

/** The step in today's shape, and the legacy plan refs where a result recorded by older code had them. */
function stepOf(at: EpisodeStep | LegacyStep): EpisodeStep & { planRef?: Ref; tasksRef?: Ref } {
  if ("pending" in at) return at;
  const pending: EpisodeStep["pending"] = at.next === "tools"
    ? { kind: "tools", calls: at.simulate ?? [] }
    : at.next === "judge"
    ? { kind: "judge", tasks: at.tasks ?? [] }
    : { kind: at.next };
  return {
    stateRef: at.stateRef,
    pending,
    ...(at.end ? { end: at.end } : {}),
    ...(at.planRef ? { planRef: at.planRef } : {}),
    ...(at.tasksRef ? { tasksRef: at.tasksRef } : {}),
  };
}

/**
 * Runs one rollout: the engine (`core/engine.ts`, inside the activities) says what the episode waits for,
 * and this only dispatches on `pending.kind`: a policy call, the tool calls to simulate then their merge, or a
 * judge round's calls then their merge. Every model call is a (remote) activity; the merges, the start and a
 * failure's record are local activities (no task-queue round trip).
 */
export async function episodeWorkflow(input: EpisodeInput): Promise<EpisodeOutcome> {
  const base = { configRef: input.configRef, groupKey: input.groupKey };
  let at = stepOf(
    input.resume ?? await local.startEpisode({
      ...base,
      datasetRef: input.datasetRef,
      recordIndex: input.recordIndex,
      episodeId: input.episodeId,
    }),
  );
  const limit = input.historyEvents ?? EPISODE_HISTORY_EVENTS;
  const fail = async (stateRef: Ref, reason: string, err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    at = stepOf(await local.failEpisode({ ...base, stateRef, reason, message }));
  };
  while (at.pending.kind !== "end") {
    const info = workflowInfo();
    if (info.historyLength >= limit || info.continueAsNewSuggested) {
      // Only the state ref travels: the history starts over, the episode goes on where it stands.
      await continueAsNew<typeof episodeWorkflow>({ ...input, resume: at });
    }
    const { stateRef, pending } = at;
    if (pending.kind === "policy") {
      try {
        at = stepOf(await llm.policyStep({ ...base, stateRef, policyVersion: input.policyVersion ?? 0 }));
      } catch (err) {
        await fail(stateRef, "model-failure", err);
      }
    } else if (pending.kind === "tools") {
      const plan = at.planRef ? { planRef: at.planRef } : {};
      try {
        const simulated = await Promise.all(
          pending.calls.map((callIndex) => llm.simulateCall({ ...base, stateRef, callIndex })),
        );
        at = stepOf(await local.applyTools({ ...base, stateRef, simulated, ...plan }));
      } catch (err) {
        await fail(stateRef, "simulator-failure", err);
      }
    } else {
      const plan = at.tasksRef ? { tasksRef: at.tasksRef } : {};
      try {
        const verdicts = await boundedMap(
          pending.tasks,
          input.judgeConcurrency,
          (task) => llm.judgeCall({ ...base, stateRef, task }),
        );
        at = stepOf(await local.applyJudge({ ...base, stateRef, verdicts, ...plan }));
      } catch (err) {
        await fail(stateRef, "judge-failure", err);
      }
    }
  }
  const end = at.end ?? { ok: false, endReason: "unknown", steps: 0, turns: 0 };
  return { episodeId: input.episodeId, stateRef: at.stateRef, ...end };
}

/** Runs `fn` over `items` with at most `limit` in flight (a sliding window), keeping order. */
export async function boundedMap<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let nextIndex = 0;
  const lane = async () => {
    while (nextIndex < items.length) {
      const i = nextIndex++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  return out;
}

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
  simulatorCalls: number;
  replayHits: number;
  updateLoss: number | null;
  checkpoint: Ref | null;
  policyVersion: number;
  metricsRef: Ref;
  seconds: number;
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

/** Input of {@linkcode taskGroupWorkflow}: one task's G episodes. */
export interface TaskGroupInput extends RolloutInput {
  /** The task's index in its iteration, and the iteration's number and kind (`it` or `val`). */
  taskIndex: number;
  iteration: number;
  kind: string;
  groupSize: number;
  /** Episodes of this group in flight. */
  concurrency: number;
  historyEvents: number;
}

/**
 * Rolls out one task's G episodes as child workflows, at most `concurrency` at a time, and returns their
 * outcomes in episode order. A group is its own workflow so that no history holds tasks × G children.
 */
export async function taskGroupWorkflow(input: TaskGroupInput): Promise<EpisodeOutcome[]> {
  const { runName, iteration, taskIndex: k, kind } = input;
  const groupKey = storeNames.group(runName, kind, iteration, k);
  return await boundedMap(
    Array.from({ length: input.groupSize }, (_, g) => g),
    input.concurrency,
    async (g) => {
      const id = workflowIds.episode(runName, iteration, k, g, kind);
      return await executeChild(episodeWorkflow, {
        workflowId: id,
        args: [{
          runName,
          configRef: input.configRef,
          judgeConcurrency: input.judgeConcurrency,
          ...(input.policyVersion !== undefined ? { policyVersion: input.policyVersion } : {}),
          datasetRef: input.datasetRef,
          recordIndex: input.recordIndex,
          episodeId: id,
          groupKey,
          historyEvents: input.historyEvents,
        }],
      });
    },
  );
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
  const prefix = validation ? "val" : "it";
  const jobs = tasks.flatMap((recordIndex, k) =>
    Array.from({ length: c.groupSize }, (_, g) => ({
      recordIndex,
      k,
      g,
      id: workflowIds.episode(runName, iteration, k, g, prefix),
      groupKey: storeNames.group(runName, prefix, iteration, k),
    }))
  );
  const progress: IterationProgress = {
    iteration,
    phase: "episodes",
    episodesDone: 0,
    episodesTotal: jobs.length,
    failed: 0,
  };
  setHandler(iterationProgressQuery, () => progress);

  let outcomes: (EpisodeOutcome & { k: number })[];
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
            runName,
            configRef: input.configRef,
            judgeConcurrency: config.models.judge.concurrency,
            ...(input.policyVersion !== undefined ? { policyVersion: input.policyVersion } : {}),
            datasetRef: input.datasetRef,
            recordIndex: t.recordIndex,
            taskIndex: t.k,
            iteration,
            kind: prefix,
            groupSize: c.groupSize,
            concurrency: perGroup,
            historyEvents: c.episodeHistoryEvents,
          }],
        });
        progress.episodesDone += group.length;
        progress.failed += group.filter((o) => !o.ok).length;
        return group.map((o) => ({ ...o, k: t.k }));
      },
    );
    outcomes = byGroup.flat();
  } else {
    // Iterations started before task groups existed replay the flat shape (one child per episode).
    outcomes = await flatEpisodes();
  }

  async function flatEpisodes() {
    return await boundedMap(jobs, c.episodeConcurrency, async (job) => {
      const outcome = await executeChild(episodeWorkflow, {
        workflowId: job.id,
        args: [{
          runName,
          configRef: input.configRef,
          judgeConcurrency: config.models.judge.concurrency,
          policyVersion: input.policyVersion,
          datasetRef: input.datasetRef,
          recordIndex: job.recordIndex,
          episodeId: job.id,
          groupKey: job.groupKey,
        }],
      });
      progress.episodesDone++;
      if (!outcome.ok) progress.failed++;
      return { ...outcome, k: job.k };
    });
  }

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

  let update: UpdateResult | null = null;
  let policyVersion = input.policyVersion;
  if (!validation && scored.batchRef) {
    progress.phase = "update";
    const trainer = proxyActivities<TrainerActivities>({ ...TRAIN, taskQueue: config.trainer.taskQueue });
    update = await trainer.updatePolicy({
      runId: runName,
      iteration,
      batch: scored.batchRef,
      base: config.trainer.base,
      parent: input.parent,
      storeUrl: input.storeUrl ?? config.store.url,
      trainer: { ...hyperparamsOf(config.trainer), seed: config.cm2.seed + iteration },
    });
    progress.phase = "publish";
    const published = await publish.publishPolicy({
      configRef: input.configRef,
      checkpoint: update.checkpoint,
      version: update.version,
    });
    policyVersion = published.version;
  }
  progress.phase = "done";
  const summary: Omit<IterationSummary, "metricsRef"> = {
    iteration,
    validation,
    episodes: outcomes.length,
    failed: progress.failed,
    meanReward: scored.meanReward,
    itemPassRate: scored.itemPassRate,
    judgeCalls: scored.judgeCalls,
    simulatorCalls: scored.simulatorCalls,
    replayHits: scored.replayHits,
    updateLoss: update ? update.metrics.loss : null,
    checkpoint: update ? update.checkpoint : input.parent,
    policyVersion,
    seconds: (Date.now() - started) / 1000,
  };
  const { metricsRef } = await store.recordMetrics({
    runName,
    summary,
    rewardsRef: scored.rewardsRef,
    updateMetrics: update ? update.metrics : null,
  });
  return { ...summary, metricsRef };
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
  let phase: RunStatus["phase"] = state.datasetRef ? "running" : "preparing";
  let waitingInPause = false;
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
    name,
    phase: state.stopRequested && phase === "running"
      ? "stopping"
      : state.paused && phase === "running"
      ? (waitingInPause ? "paused" : "pausing")
      : phase,
    iteration: state.iteration,
    iterations: state.config.cm2.iterations,
    policyVersion: state.policyVersion,
    checkpoint: state.checkpoint,
    recent: state.recent,
  }));
  setHandler(setHyperparametersUpdate, (h) => {
    state.config = applyHyperparameters(state.config, h);
    return h;
  }, { validator: checkHyperparameters });

  if (!state.datasetRef) {
    const ds = await store.prepareDataset({ config: state.config });
    state.datasetRef = ds.datasetRef;
    state.trainCount = ds.trainCount;
    state.valCount = ds.valCount;
    phase = "running";
  }
  upsertSearchAttributes({ Cm2RunName: [name], Cm2Status: ["running"] });

  let sinceStart = 0;
  while (state.iteration < state.config.cm2.iterations && !state.stopRequested) {
    if (state.paused) {
      upsertSearchAttributes({ Cm2Status: ["paused"] });
      waitingInPause = true;
      await condition(() => !state.paused || state.stopRequested);
      waitingInPause = false;
      upsertSearchAttributes({ Cm2Status: ["running"] });
      if (state.stopRequested) break;
    }
    const it = state.iteration;
    const { configRef, storeUrl } = await store.putConfig({ config: state.config });
    const common = {
      runName: name,
      config: state.config,
      configRef,
      ...(storeUrl ? { storeUrl } : {}),
      datasetRef: state.datasetRef!,
      trainCount: state.trainCount,
      valCount: state.valCount,
    };
    const ve = state.config.cm2.validationEvery;
    if (ve > 0 && it % ve === 0 && state.valCount > 0) {
      const val = await executeChild(iterationWorkflow, {
        workflowId: workflowIds.validation(name, it),
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
  phase = state.stopRequested ? "stopped" : "completed";
  upsertSearchAttributes({ Cm2Status: [phase] });
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
