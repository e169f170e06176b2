/**
 * Rollouts: `taskGroup` (one task's G episodes as children) and `episode` (one rollout). Deterministic wiring
 * only: the engine (`core/engine.ts`) runs inside the activities and says what an episode waits for; the episode
 * workflow dispatches on it. An episode continues as new once its history passes `cm2.episodeHistoryEvents` (or
 * when the server suggests it), carrying only where it stands (a state ref).
 *
 * @module
 */
import {
  continueAsNew,
  executeChild,
  proxyActivities,
  proxyLocalActivities,
  workflowInfo,
} from "@temporalio/workflow";
import { storeNames, workflowIds } from "../core/names.ts";
import type { Activities } from "../activities/mod.ts";
import type { EpisodeStep } from "../activities/episode.ts";
import type { Ref } from "../core/ref.ts";
import { LLM, LOCAL_STORE } from "./presets.ts";
import { boundedMap } from "./bounded_map.ts";

const local = proxyLocalActivities<Activities>(LOCAL_STORE);
const llm = proxyActivities<Activities>(LLM);
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
