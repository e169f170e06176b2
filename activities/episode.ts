/**
 * Episode activities: one model call each (policy step, one simulated tool call, one judge call), plus the
 * local activities that start an episode, merge simulated results or a judge round, and record a failure.
 * The decisions are the engine's ({@linkcode advance}, `core/engine.ts`); here are only the store (episode
 * states by ref, `store/episodes.ts`), the group's simulator cache and the judge's verdict cache (first-writer-
 * wins names), and the model calls.
 *
 * Idempotency: activities read immutable blobs and write content-addressed ones, so a retry computes the
 * same refs. Each model call carries an idempotency key stable across retries (`callKey`).
 *
 * @module
 */
import { ApplicationFailure, Context } from "@temporalio/activity";
import type { RunConfig } from "../core/config.ts";
import {
  advance,
  completeJudge,
  completePolicy,
  completeTools,
  failPending,
  simulationOf,
} from "../core/engine.ts";
import {
  type EpisodeState,
  policyRequest,
  startEpisode as startState,
  type ToolResult,
} from "../core/episode.ts";
import { toolResultFromSimulation } from "../core/episode.ts";
import {
  askJudge,
  type JudgeRequestOptions,
  judgeRoundRequests,
  type JudgeTask,
  type JudgeVerdict,
  verdictFromError,
} from "../core/episode_judge.ts";
import { episodeOptionsOf } from "../core/episode_options.ts";
import { type JudgeNotes, judgeNotesName, verdictNotes } from "../core/judge.ts";
import { type ChatResult, LlmError, type Sampling } from "../core/llm_types.ts";
import { cacheKey, parseSimulation } from "../core/simulator.ts";
import type { CachedStore } from "../store/cached.ts";
import { loadManifest } from "../store/datasets.ts";
import { type EpisodeHandle, type EpisodeOwner, EpisodeStates } from "../store/episodes.ts";
import type { ArtifactStore, Ref } from "../store/mod.ts";
import { policyModelName } from "./policy.ts";
import { type ModelFactory, sha256Hex, toFailure } from "./common.ts";

/**
 * Where an episode stands after one of its activities: its state's ref, what it waits for (the engine's
 * `Pending`, without the end's details), and small facts once it has ended. Only refs and small values.
 */
export interface EpisodeStep {
  stateRef: Ref;
  pending: { kind: "policy" } | { kind: "tools"; calls: number[] } | { kind: "judge"; tasks: number[] } | {
    kind: "end";
  };
  end?: { ok: boolean; endReason: string; steps: number; turns: number };
}

/** What the episode activities need. */
export interface EpisodeDeps {
  store: ArtifactStore;
  models: ModelFactory;
  cached: CachedStore;
}

/**
 * The idempotency key of one logical model call: the workflow id plus what the call is (`policy/<step>`,
 * `sim/<step>/<call>`, `judge/<task key>`). Stable across activity retries and across runs that take the
 * same path, unlike activity ids.
 */
function callKey(what: string): string {
  let wf = "standalone";
  try {
    wf = Context.current().info.workflowExecution?.workflowId ?? wf;
  } catch { /* outside an activity */ }
  return `${wf}/${what}`;
}

const simName = (groupKey: string, key: string) => `${groupKey}/sim/${sha256Hex(key)}`;
const judgeName = (key: string) => `judge-cache/${key.slice(0, 2)}/${key}`;

/**
 * Builds the episode activities. Long as a whole because it is a factory: each activity below is a short
 * function (the longest, `simulateCall`, ~45 lines), and the closure only shares the worker's caches.
 */
export function createEpisodeActivities(deps: EpisodeDeps) {
  const { cached } = deps;
  const states = new EpisodeStates(cached);
  const cfg = (ref: Ref) => cached.memo<RunConfig>(ref);
  const judgeOf = (config: RunConfig): JudgeRequestOptions => ({
    model: config.models.judge.model,
    hash: sha256Hex,
    defaults: config.models.judge.sampling as Sampling,
  });
  /** The judge tasks of a waiting state, built once per state on this worker (a round's calls share them). */
  const rounds = new Map<string, Promise<JudgeTask[]>>();
  const roundOf = (config: RunConfig, stateRef: Ref): Promise<JudgeTask[]> => {
    let tasks = rounds.get(stateRef.sha256);
    if (!tasks) {
      tasks = load(stateRef).then(({ state }) => judgeRoundRequests(state, judgeOf(config)));
      tasks.catch(() => rounds.delete(stateRef.sha256));
      rounds.set(stateRef.sha256, tasks);
      if (rounds.size > 256) rounds.delete(rounds.keys().next().value!);
    }
    return tasks;
  };

  /**
   * Advances the episode through everything the caches answer (the engine asks, this looks the keys up in
   * the store, until nothing new is asked), saves the state once, and says what the episode waits for.
   */
  async function settle(
    config: RunConfig,
    state0: EpisodeState,
    at: { owner: EpisodeOwner; recordRef: Ref | null; base: EpisodeHandle | null },
  ): Promise<EpisodeStep> {
    const tools = new Map<string, string | undefined>();
    const verdicts = new Map<string, boolean[] | undefined>();
    const caches = { toolResult: (k: string) => tools.get(k), verdict: (k: string) => verdicts.get(k) };
    const group = at.owner.group;
    let state = state0;
    for (;;) {
      const r = advance(state, caches, judgeOf(config));
      state = r.state;
      const newTools = r.lookups.tools.filter((k) => !tools.has(k));
      const newVerdicts = r.lookups.verdicts.filter((k) => !verdicts.has(k));
      if (newTools.length === 0 && newVerdicts.length === 0) {
        const saved = await states.save(state, at);
        if (r.pending.kind !== "end") return { stateRef: saved.ref, pending: r.pending };
        return {
          stateRef: saved.ref,
          pending: { kind: "end" },
          end: {
            ok: r.pending.end.ok,
            endReason: r.pending.end.reason,
            steps: state.assistantSteps,
            turns: state.turns.length,
          },
        };
      }
      await Promise.all([
        ...newTools.map(async (k) => tools.set(k, await cached.settledText(simName(group, k)))),
        ...newVerdicts.map(async (k) => {
          const text = await cached.settledText(judgeName(k));
          verdicts.set(k, text === undefined ? undefined : JSON.parse(text) as boolean[]);
        }),
      ]);
    }
  }

  /**
   * Records a model call that failed in a way the activity's retry will try again (rate limit, server error,
   * timeout, a broken connection or body) under `<group>/faults/`, before the activity fails: the iteration's
   * metrics count these (`modelFaults`), apart from retries that a lost worker causes. First writer wins, so a
   * retried record is one record.
   */
  async function noteFault(groupKey: string, what: string, err: unknown): Promise<void> {
    if (!(err instanceof LlmError) || !err.retryable) return;
    let attempt = 1;
    try {
      attempt = Context.current().info.attempt;
    } catch { /* outside an activity */ }
    const name = `${groupKey}/faults/${sha256Hex(callKey(what)).slice(0, 32)}-${attempt}`;
    try {
      await cached.settle(name, await cached.writeJson({ type: err.type, call: what, attempt }));
    } catch { /* the record is best effort: the activity fails either way */ }
  }

  /**
   * Keeps the judge's reasoning for the cells of one call, for the run viewer: `<group>/notes/<episode>/<cell>`
   * ({@linkcode JudgeNotes}). Best effort: a note that cannot be written never fails the verdict.
   */
  async function keepNotes(
    stateRef: Ref,
    groupKey: string,
    task: JudgeTask,
    answer: ChatResult,
  ): Promise<void> {
    const notes = verdictNotes(answer, task.itemIds);
    if (!notes) return;
    try {
      const { at } = await load(stateRef, groupKey);
      const record: JudgeNotes = {
        turn: task.turn,
        variant: task.variant,
        step: task.step,
        vote: task.vote,
        itemIds: task.itemIds,
        notes,
      };
      const name = judgeNotesName(at.owner.group, at.owner.episode, task);
      if (!cached.isSettled(name)) await cached.settle(name, await cached.writeJson(record));
    } catch { /* the viewer shows the cell without reasoning */ }
  }

  /**
   * Loads a state and the base for its next save. A state from before v2 names no owner: it takes the group
   * key its workflow passes.
   */
  async function load(stateRef: Ref, groupKey?: string) {
    const h = await states.load(stateRef);
    const owner = h.owner.group === "" && groupKey ? { group: groupKey, episode: h.owner.episode } : h.owner;
    return { state: h.state, at: { owner, recordRef: h.recordRef, base: h } };
  }

  return {
    /** Builds the initial episode state (system, tools, first user message) and advances it. */
    async startEpisode(
      input: { configRef: Ref; groupKey: string; datasetRef: Ref; recordIndex: number; episodeId: string },
    ): Promise<EpisodeStep> {
      const config = await cfg(input.configRef);
      const manifest = await loadManifest(deps.store, input.datasetRef);
      const recordRef = manifest.records[input.recordIndex];
      if (!recordRef) {
        throw ApplicationFailure.nonRetryable(
          `Dataset ${input.datasetRef.uri} has no record ${input.recordIndex}`,
          "InvalidInput",
        );
      }
      const state = startState(await cached.memo(recordRef), episodeOptionsOf(config));
      const owner = { group: input.groupKey, episode: input.episodeId };
      return await settle(config, state, { owner, recordRef, base: null });
    },

    /** One policy call (one assistant step), then the engine up to the next model call. */
    async policyStep(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; policyVersion?: number },
    ): Promise<EpisodeStep> {
      const config = await cfg(input.configRef);
      const { state, at } = await load(input.stateRef, input.groupKey);
      const live = policyModelName(config, input.policyVersion ?? 0);
      const policy = config.models.policy;
      const model = live === policy.model ? deps.models("policy", config) : deps.models("policy", {
        ...config,
        models: { ...config.models, policy: { ...policy, model: live } },
      });
      let result;
      try {
        result = await model.complete({
          ...policyRequest(state),
          idempotencyKey: callKey(`policy/${state.assistantSteps}`),
        });
      } catch (err) {
        await noteFault(input.groupKey, `policy/${state.assistantSteps}`, err);
        toFailure(err);
      }
      return await settle(config, completePolicy(state, result), at);
    },

    /** One simulator call for one tool call; the first result for (tool, args) wins within the group. */
    async simulateCall(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; callIndex: number },
    ): Promise<{ callIndex: number; resultRef: Ref }> {
      const config = await cfg(input.configRef);
      const { state } = await load(input.stateRef);
      let sim;
      try {
        sim = simulationOf(state, input.callIndex);
      } catch (err) {
        throw ApplicationFailure.nonRetryable((err as Error).message, "InvalidInput");
      }
      const { call } = sim;
      const name = simName(input.groupKey, cacheKey(call.name, call.arguments));
      const existing = sim.cache ? await cached.settledText(name) : undefined;
      let result: ToolResult;
      if (existing !== undefined) {
        result = { index: call.index, kind: "cached", content: existing };
      } else {
        let parsed;
        try {
          parsed = parseSimulation(
            await deps.models("simulator", config).complete({
              ...sim.request,
              idempotencyKey: callKey(`sim/${state.assistantSteps}/${call.index}`),
            }),
          );
        } catch (err) {
          if (err instanceof LlmError && !err.retryable) parsed = { ok: false as const, error: err.message };
          else {
            await noteFault(input.groupKey, `sim/${state.assistantSteps}/${call.index}`, err);
            toFailure(err);
          }
        }
        result = toolResultFromSimulation(call, parsed);
        if (parsed.ok && sim.cache) {
          const mine = await deps.store.put(new TextEncoder().encode(parsed.content));
          const { winner, text } = await cached.settle(name, mine);
          if (winner.sha256 !== mine.sha256) result = { index: call.index, kind: "cached", content: text };
        }
      }
      return { callIndex: input.callIndex, resultRef: await cached.writeJson(result) };
    },

    /** Completes the step's tool calls with the simulated results, then the engine up to the next model call. */
    async applyTools(
      input: {
        configRef: Ref;
        groupKey: string;
        stateRef: Ref;
        simulated: { callIndex: number; resultRef: Ref }[];
        /** Older workflows: the plan of the step's other results (states saved before the engine kept them). */
        planRef?: Ref;
      },
    ): Promise<EpisodeStep> {
      const config = await cfg(input.configRef);
      const { state, at } = await load(input.stateRef, input.groupKey);
      const results = await Promise.all(input.simulated.map((s) => cached.readJson<ToolResult>(s.resultRef)));
      let waiting = state; // shared with the reader's cache: never changed in place
      if (!state.toolResults && input.planRef) {
        const plan = await cached.readJson<{ results: (ToolResult | null)[] }>(input.planRef);
        waiting = { ...state, toolResults: plan.results };
      }
      return await settle(config, completeTools(waiting, results), at);
    },

    /** One judge call (task `task` of the episode's round); a verdict that does not parse is data. */
    async judgeCall(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; task: number },
    ): Promise<JudgeVerdict & { task: number }> {
      const config = await cfg(input.configRef);
      const task = (await roundOf(config, input.stateRef))[input.task];
      if (!task) throw ApplicationFailure.nonRetryable(`No judge task ${input.task}`, "InvalidInput");
      let verdict: JudgeVerdict;
      let answer: ChatResult | undefined;
      try {
        // An answer that does not parse is asked again (a new call, its own idempotency key) before it counts.
        verdict = await askJudge(
          task,
          async (attempt) =>
            answer = await deps.models("judge", config).complete({
              ...task.request,
              idempotencyKey: callKey(`judge/${task.key}${attempt > 0 ? `/again-${attempt}` : ""}`),
            }),
        );
      } catch (err) {
        if (err instanceof LlmError && !err.retryable) {
          verdict = verdictFromError(task, `${err.type}: ${err.message}`);
        } else {
          await noteFault(input.groupKey, `judge/${task.key}`, err);
          toFailure(err);
        }
      }
      const name = judgeName(task.key);
      if (verdict.ok && !cached.isSettled(name)) {
        await cached.settle(name, await cached.writeJson(verdict.answers));
      }
      if (verdict.ok && answer) await keepNotes(input.stateRef, input.groupKey, task, answer);
      return { ...verdict, task: input.task };
    },

    /** Merges the round's new verdicts (the cached ones are in the state), then the engine up to the next call. */
    async applyJudge(
      input: {
        configRef: Ref;
        groupKey: string;
        stateRef: Ref;
        verdicts: (JudgeVerdict & { task: number })[];
        /** Older workflows: the round's plan with its cached answers (states saved before the engine kept them). */
        tasksRef?: Ref;
      },
    ): Promise<EpisodeStep> {
      const config = await cfg(input.configRef);
      const { state, at } = await load(input.stateRef, input.groupKey);
      let waiting = state; // shared with the reader's cache: never changed in place
      if (!state.judgeAnswers && input.tasksRef) {
        const plan = await cached.readJson<{ cached: (boolean[] | null)[] }>(input.tasksRef);
        waiting = { ...state, judgeAnswers: plan.cached };
      }
      const verdicts = new Map(input.verdicts.map(({ task, ...v }) => [task, v as JudgeVerdict]));
      return await settle(config, completeJudge(waiting, verdicts), at);
    },

    /** Ends an episode whose model call failed for good (retries exhausted): the failure is data. */
    async failEpisode(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; reason: string; message: string },
    ): Promise<EpisodeStep> {
      const config = await cfg(input.configRef);
      const { state, at } = await load(input.stateRef, input.groupKey);
      return await settle(config, failPending(state, judgeOf(config), input.message), at);
    },
  };
}
