/**
 * The episode engine's one entry point: {@linkcode advance} takes an episode state and what the caches know,
 * runs every transition that needs no model (tool calls answered by exact replay, the group's simulator
 * cache or an error result; judge rounds answered wholly by the verdict cache), and stops where the episode
 * waits for a model or has ended:
 *
 * ```
 * advance(state, caches) → { state, pending: policy | tools(calls) | judge(tasks) | end }
 *   policy → completePolicy(state, result)   ┐
 *   tools  → completeTools(state, results)   ├→ advance(…) again
 *   judge  → completeJudge(state, verdicts)  ┘
 *   a model call that failed for good → failPending(state, message) → advance(…)
 * ```
 *
 * Every driver uses it: the Temporal activities (`activities/episode.ts`, one model call per activity, the
 * state in the store), the in-process loop (`core/episode_loop.ts`: tests, the plain benchmark), and the
 * tests. The workflow only dispatches on `pending.kind`. Answers found in the caches while the episode waits
 * are kept in the state (`toolResults`, `judgeAnswers`), so completing needs only the new results.
 *
 * Pure; no I/O. Caches are synchronous lookups: a driver whose caches live in a store looks up the keys
 * {@linkcode advance} asked for ({@linkcode AdvanceResult.misses}) and calls it again.
 *
 * @module
 */
import type { ChatRequest, ChatResult } from "./llm_types.ts";
import {
  cacheKey,
  type PendingCall,
  resolveToolCall,
  simulationRequest,
  type SimulatorCache,
} from "./simulator.ts";
import {
  applyPolicyFailure,
  applyPolicyResult,
  applyToolResults,
  clone,
  type EpisodeEnd,
  type EpisodeState,
  episodeToolIndex,
  type ToolResult,
  toolResultFromResolution,
  toolResultFromSimulation,
} from "./episode.ts";
import {
  applyJudgement,
  type JudgeRequestOptions,
  judgeRoundCells,
  judgeRoundRequests,
  type JudgeTask,
  type JudgeVerdict,
  shareRound,
  verdictFromError,
} from "./episode_judge.ts";

/** What an episode waits for. */
export type Pending =
  | { kind: "policy" }
  /** Indices (`PendingCall.index`) of the calls to simulate, one per distinct (tool, arguments). */
  | { kind: "tools"; calls: number[] }
  /** Indices into {@linkcode judgeRoundRequests} of the judge calls to make. */
  | { kind: "judge"; tasks: number[] }
  | { kind: "end"; end: EpisodeEnd };

/** Synchronous cache lookups; `undefined` is a miss (or a key not looked up yet). */
export interface EngineCaches {
  /** The group's simulated result for a simulator cache key ({@linkcode cacheKey}). */
  toolResult(key: string): string | undefined;
  /** Answers stored for a judge task key. */
  verdict(key: string): boolean[] | undefined;
}

/** No caches. */
export const NO_CACHES: EngineCaches = { toolResult: () => undefined, verdict: () => undefined };

/** Result of {@linkcode advance}. */
export interface AdvanceResult {
  state: EpisodeState;
  pending: Pending;
  /** Keys looked up while deciding the pending work (a store-backed driver fetches these). */
  lookups: { tools: string[]; verdicts: string[] };
}

/**
 * Runs the transitions that need no model, from `state0` until the episode waits for a model or ends.
 * Does not change `state0`.
 */
export function advance(
  state0: EpisodeState,
  caches: EngineCaches,
  judge: JudgeRequestOptions,
): AdvanceResult {
  let state = state0;
  const lookups = { tools: [] as string[], verdicts: [] as string[] };
  for (;;) {
    if (state.phase === "policy") return { state, pending: { kind: "policy" }, lookups };
    if (state.phase === "done") return { state, pending: { kind: "end", end: state.end! }, lookups };
    if (state.phase === "tools") {
      const index = episodeToolIndex(state);
      const cache: SimulatorCache = { entries: {} };
      const results: (ToolResult | null)[] = [];
      const simulate = new Map<string, number>();
      for (const call of state.pendingCalls) {
        const key = cacheKey(call.name, call.arguments);
        if (index.options.cache) {
          lookups.tools.push(key);
          const hit = caches.toolResult(key);
          if (hit !== undefined) cache.entries[key] = hit;
        }
        const r = resolveToolCall(index, call, cache);
        if (r.kind !== "simulate") results.push(toolResultFromResolution(call, r));
        else {
          results.push(null);
          // One simulation per distinct call (with the cache on): repeats take its result as cached.
          if (!index.options.cache || !simulate.has(key)) {
            simulate.set(index.options.cache ? key : `${call.index}`, call.index);
          }
        }
      }
      if (simulate.size > 0) {
        state = clone(state);
        state.toolResults = results;
        return { state, pending: { kind: "tools", calls: [...simulate.values()] }, lookups };
      }
      state = applyToolResults(state, results as ToolResult[]);
      continue;
    }
    const tasks = judgeRoundRequests(state, judge);
    const answers = tasks.map((t) => {
      lookups.verdicts.push(t.key);
      const hit = caches.verdict(t.key);
      return hit && hit.length === t.items.length ? hit : null;
    });
    const open = answers.flatMap((a, i) => (a ? [] : [i]));
    if (open.length > 0) {
      const waiting = clone(state);
      shareRound(state, waiting);
      state = waiting;
      state.judgeAnswers = answers;
      return { state, pending: { kind: "judge", tasks: open }, lookups };
    }
    state = applyJudgement(state, tasks.map((t, i) => answered(t, answers[i]!)));
  }
}

function answered(
  task: Pick<JudgeTask, "variant" | "step" | "items" | "vote">,
  answers: boolean[],
): JudgeVerdict {
  return { variant: task.variant, step: task.step, items: task.items, vote: task.vote, ok: true, answers };
}

/** A call the episode waits for, the simulator request for it, and whether results go to the group cache. */
export function simulationOf(
  state: EpisodeState,
  callIndex: number,
): { call: PendingCall; request: ChatRequest; cache: boolean } {
  const call = state.phase === "tools" ? state.pendingCalls.find((c) => c.index === callIndex) : undefined;
  if (!call) throw new Error(`The episode waits for no tool call ${callIndex} (phase ${state.phase})`);
  const index = episodeToolIndex(state);
  return { call, request: simulationRequest(index, call), cache: index.options.cache };
}

/** Records the policy's step (the episode waited for `policy`). */
export function completePolicy(state: EpisodeState, result: ChatResult): EpisodeState {
  return applyPolicyResult(state, result);
}

/**
 * Completes the calls the episode waited for with their simulated results (one per call named in
 * `pending.calls`); a repeat of a simulated call takes that result as `cached`.
 */
export function completeTools(state0: EpisodeState, simulated: readonly ToolResult[]): EpisodeState {
  const stash = state0.toolResults;
  if (state0.phase !== "tools" || !stash) {
    throw new Error(`completeTools() needs an episode waiting for tools, it is in phase ${state0.phase}`);
  }
  const byIndex = new Map(simulated.map((r) => [r.index, r]));
  const byKey = new Map<string, ToolResult>();
  for (const call of state0.pendingCalls) {
    const r = byIndex.get(call.index);
    if (r) byKey.set(cacheKey(call.name, call.arguments), r);
  }
  const results = state0.pendingCalls.map((call, i): ToolResult => {
    const known = stash[i] ?? byIndex.get(call.index);
    if (known) return known;
    const first = byKey.get(cacheKey(call.name, call.arguments));
    if (!first) throw new Error(`completeTools() has no result for call ${call.index} (${call.name})`);
    return first.kind === "simulated" ? { index: call.index, kind: "cached", content: first.content } : {
      ...first,
      index: call.index,
    };
  });
  const state = clone(state0);
  delete state.toolResults;
  return applyToolResults(state, results);
}

/** Completes the judge round with the verdicts of the tasks named in `pending.tasks` (by task index). */
export function completeJudge(
  state0: EpisodeState,
  verdicts: ReadonlyMap<number, JudgeVerdict>,
): EpisodeState {
  const stash = state0.judgeAnswers;
  if (state0.phase !== "judge" || !stash) {
    throw new Error(`completeJudge() needs an episode waiting for the judge, it is in phase ${state0.phase}`);
  }
  const all = judgeRoundCells(state0).map((t, i) => {
    const cached = stash[i];
    if (cached) return answered(t, cached);
    const v = verdicts.get(i);
    if (!v) throw new Error(`completeJudge() has no verdict for task ${i}`);
    return v;
  });
  const state = clone(state0);
  delete state.judgeAnswers;
  return applyJudgement(state, all);
}

/**
 * Ends what the episode waits for with a failure (a model call that failed for good): `model-failure`,
 * `simulator-failure` or `judge-failure`, which make the episode `ok=false`.
 */
export function failPending(state0: EpisodeState, judge: JudgeRequestOptions, message: string): EpisodeState {
  const state = clone(state0);
  delete state.toolResults;
  delete state.judgeAnswers;
  if (state.phase === "policy") return applyPolicyFailure(state, message);
  if (state.phase === "tools") {
    return applyToolResults(
      state,
      state.pendingCalls.map((c: PendingCall) => toolResultFromSimulation(c, { ok: false, error: message })),
    );
  }
  if (state.phase === "judge") {
    const [first] = judgeRoundRequests(state, judge);
    return applyJudgement(state, first ? [verdictFromError(first, message)] : []);
  }
  return state;
}
