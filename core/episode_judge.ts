/**
 * The judge phase of the episode engine (`core/episode.ts`): the judge calls of a round
 * ({@linkcode judgeRoundRequests}), their verdicts, and {@linkcode applyJudgement}, which merges a round and
 * decides what follows (the next round, the next recorded user message, or the end). Also
 * {@linkcode episodeVerdicts}, the episode's verdicts for the reward math. Pure.
 *
 * @module
 */
import { type EpisodeVerdicts, turnPassed } from "./rewards.ts";
import type { ChatRequest, ChatResult, Sampling } from "./llm_types.ts";
import {
  judgeCacheKey,
  judgeRequest,
  majority,
  parseVerdicts,
  promptVersionFor,
  roundCells,
} from "./judge.ts";
import { judgeContext } from "./transcript.ts";
import {
  clone,
  type EndReason,
  type EpisodeState,
  estimateTokens,
  expectPhase,
  fillTurn,
  finish,
  itemsOf,
  markSource,
  newTurn,
  overLimit,
  recordedUsers,
  referenceTurns,
} from "./episode.ts";

/** One judge call to make. */
export interface JudgeTask {
  /** Content-addressed cache key ({@linkcode judgeCacheKey}). */
  key: string;
  turn: number;
  variant: number;
  /** Assistant step within the turn. */
  step: number;
  /** Message index of that assistant step. */
  messageIndex: number;
  /** Item indices judged by this call. */
  items: number[];
  /** Their checklist ids, in the same order. */
  itemIds: string[];
  /** Vote number, 0 … votes − 1. */
  vote: number;
  promptVersion: string;
  request: ChatRequest;
}

/** Runtime settings of judge requests. */
export interface JudgeRequestOptions {
  /** Judge model name (part of the cache key). */
  model: string;
  /** Hash for cache keys, e.g. hex SHA-256 (inject `node:crypto` from activities). */
  hash: (text: string) => string;
  /** Sampling of judge requests (absent fields: the role's defaults). */
  sampling?: Sampling;
  /** The role's default sampling, which the client adds to each request (part of the cache key). */
  defaults?: Sampling;
}

/** Where one judge call of a round goes: the variant, the step (and its message), the items, the vote. */
export type RoundCell = Pick<JudgeTask, "turn" | "variant" | "step" | "messageIndex" | "items" | "vote">;

/**
 * The judge calls of the current round for one checklist variant of `turn` (which must be the turn being
 * judged), without their requests: one per (step, batch of up to `itemsPerCall` items, vote).
 */
function roundCellsOf(state: EpisodeState, turn: number, variant: number): RoundCell[] {
  expectPhase(state, "judge", "judgeRequests()");
  if (turn !== state.turn) {
    throw new Error(`judgeRequests() asked for turn ${turn}, the episode judges turn ${state.turn}`);
  }
  const ts = state.turns[turn]!;
  const sat = ts.sat[variant];
  if (!sat) {
    throw new Error(`judgeRequests() asked for variant ${variant}, the episode uses ${ts.sat.length}`);
  }
  const { votes, itemsPerCall, mode } = state.options.judge;
  const byStep = new Map<number, number[]>();
  for (const cell of roundCells(sat, mode)) {
    byStep.set(cell.step, [...(byStep.get(cell.step) ?? []), cell.item]);
  }
  const out: RoundCell[] = [];
  for (const [step, cells] of byStep) {
    for (let k = 0; k < cells.length; k += itemsPerCall) {
      const items = cells.slice(k, k + itemsPerCall);
      for (let vote = 0; vote < votes; vote++) {
        out.push({ turn, variant, step, messageIndex: ts.steps[step]!, items, vote });
      }
    }
  }
  return out;
}

/** The judge calls of the current round, over every variant in use, without their requests (cheap). */
export function judgeRoundCells(state: EpisodeState): RoundCell[] {
  return state.turns[state.turn]!.sat.flatMap((_, v) => roundCellsOf(state, state.turn, v));
}

/**
 * The judge calls of the current round for one checklist variant of `turn` (which must be the turn being
 * judged): one task per (step, batch of up to `itemsPerCall` items, vote), with its request and cache key.
 */
export function judgeRequests(
  state: EpisodeState,
  turn: number,
  variant: number,
  opts: JudgeRequestOptions,
): JudgeTask[] {
  const items = itemsOf(state, variant, turn);
  const contexts = new Map<number, ReturnType<typeof judgeContext>>();
  const requests = new Map<string, ChatRequest>();
  return roundCellsOf(state, turn, variant).map((cell) => {
    const ts = state.turns[turn]!;
    let context = contexts.get(cell.step);
    if (context === undefined) {
      context = judgeContext(state.messages, ts.userIndex, cell.messageIndex);
      contexts.set(cell.step, context);
    }
    const judged = cell.items.map((c) => items[c]!);
    const rk = `${cell.step}/${cell.items.join(",")}`;
    let request = requests.get(rk);
    if (!request) {
      request = judgeRequest(judged, context, opts.sampling);
      requests.set(rk, request);
    }
    return {
      ...cell,
      key: judgeCacheKey(opts.hash, {
        model: opts.model,
        request,
        ...(opts.defaults ? { defaults: opts.defaults } : {}),
        vote: cell.vote,
      }),
      itemIds: judged.map((i) => i.id),
      promptVersion: promptVersionFor(judged.length),
      request,
    };
  });
}

/** Rounds already built, by state object (a state is never changed after a transition returns it). */
const builtRounds = new WeakMap<EpisodeState, { opts: JudgeRequestOptions; tasks: JudgeTask[] }>();

/** All judge calls of the current round, over every variant in use (built once per state object). */
export function judgeRoundRequests(state: EpisodeState, opts: JudgeRequestOptions): JudgeTask[] {
  const known = builtRounds.get(state);
  if (
    known && known.opts.model === opts.model && known.opts.hash === opts.hash &&
    known.opts.sampling === opts.sampling
  ) {
    return known.tasks;
  }
  const tasks = state.turns[state.turn]!.sat.flatMap((_, v) => judgeRequests(state, state.turn, v, opts));
  builtRounds.set(state, { opts, tasks });
  return tasks;
}

/** Lets `copy` (a copy of `state` with the same round) reuse the round built for `state`. */
export function shareRound(state: EpisodeState, copy: EpisodeState): void {
  const known = builtRounds.get(state);
  if (known) builtRounds.set(copy, known);
}

/** The answer to one {@linkcode JudgeTask}; `retries`: answers that did not parse and were asked again. */
export type JudgeVerdict =
  & Pick<JudgeTask, "variant" | "step" | "items" | "vote">
  & { retries?: number }
  & ({ ok: true; answers: boolean[] } | { ok: false; error: string });

/**
 * How many times one judge call is asked before an answer that does not parse counts as a judge failure (the
 * reference allows 2). Transport errors are retried by the activity's retry policy, not here.
 */
export const JUDGE_PARSE_ATTEMPTS = 2;

/**
 * Asks the judge for one task until its answer parses, at most {@linkcode JUDGE_PARSE_ATTEMPTS} times; `ask`
 * makes one call (attempt 0, 1, …) and may throw (the caller decides what a thrown error means). The verdict
 * says how many answers were asked again.
 */
export async function askJudge(
  task: JudgeTask,
  ask: (attempt: number) => Promise<Pick<ChatResult, "content" | "finishReason">>,
): Promise<JudgeVerdict> {
  let verdict = verdictFromResult(task, await ask(0));
  for (let attempt = 1; !verdict.ok && attempt < JUDGE_PARSE_ATTEMPTS; attempt++) {
    verdict = { ...verdictFromResult(task, await ask(attempt)), retries: attempt };
  }
  return verdict;
}

/** The verdict of a task from the judge's result. */
export function verdictFromResult(
  task: JudgeTask,
  result: Pick<ChatResult, "content" | "finishReason">,
): JudgeVerdict {
  const parsed = parseVerdicts(result, task.itemIds);
  const base = { variant: task.variant, step: task.step, items: task.items, vote: task.vote };
  return parsed.ok
    ? { ...base, ok: true, answers: parsed.answers }
    : { ...base, ok: false, error: parsed.error };
}

/** The verdict of a task whose call failed for good. */
export function verdictFromError(task: JudgeTask, error: string): JudgeVerdict {
  return { variant: task.variant, step: task.step, items: task.items, vote: task.vote, ok: false, error };
}

/**
 * Merge the verdicts of the current round (every task of {@linkcode judgeRoundRequests}). A failed
 * verdict ends the episode with `judge-failure` (ok=false). When cells remain (incremental mode) the next
 * round follows (`judge-turn`). When the turn is judged: an unfinished turn ends with its pending reason;
 * a failed gate ends with `gate-failed`; the last reference turn ends with `reply-complete`; otherwise the
 * next recorded user message is appended (`policy`), within the step, turn and context limits.
 */
export function applyJudgement(state0: EpisodeState, verdicts: readonly JudgeVerdict[]): EpisodeState {
  expectPhase(state0, "judge", "applyJudgement()");
  const state = clone(state0);
  const t = state.turn;
  const turn = state.turns[t]!;
  state.metrics.judgeRetries = (state.metrics.judgeRetries ?? 0) +
    verdicts.reduce((n, v) => n + (v.retries ?? 0), 0);
  const failed = verdicts.find((v) => !v.ok);
  if (failed && !failed.ok) {
    state.pendingEnd = null;
    turn.judged = false;
    return finish(state, "judge-failure", failed.error);
  }
  const { votes, mode } = state.options.judge;
  const ballots = new Map<string, boolean[]>();
  for (const v of verdicts) {
    if (!v.ok) continue;
    if (v.answers.length !== v.items.length) {
      throw new Error(`A verdict has ${v.answers.length} answers for ${v.items.length} items`);
    }
    v.items.forEach((c, k) => {
      const key = `${v.variant}/${v.step}/${c}`;
      ballots.set(key, [...(ballots.get(key) ?? []), v.answers[k]!]);
    });
  }
  const expected = turn.sat.flatMap((sat, v) => roundCells(sat, mode).map((cell) => ({ v, ...cell })));
  if (expected.length !== ballots.size) {
    throw new Error(
      `applyJudgement() got verdicts for ${ballots.size} cells, the round has ${expected.length}`,
    );
  }
  for (const cell of expected) {
    const got = ballots.get(`${cell.v}/${cell.step}/${cell.item}`);
    if (!got || got.length !== votes) {
      throw new Error(
        `Cell (variant ${cell.v}, step ${cell.step}, item ${cell.item}) has ${
          got?.length ?? 0
        } votes, expected ${votes}`,
      );
    }
    turn.sat[cell.v]![cell.step]![cell.item] = majority(got);
    markSource(turn, cell.v, cell.step, cell.item, "m");
  }
  state.metrics.judgeVerdicts += verdicts.length;
  fillTurn(state);
  if (turn.sat.some((sat) => roundCells(sat, mode).length > 0)) return state;

  turn.judged = true;
  turn.passed = turn.sat.map((sat, v) =>
    turnPassed(itemsOf(state, v, t), sat.map((row) => ({ sat: row.map((x) => x === true) })))
  );
  if (state.pendingEnd) {
    const end = state.pendingEnd;
    state.pendingEnd = null;
    state.phase = "done";
    state.end = end;
    return state;
  }
  state.judgedTurns++;
  const failures = turn.passed.filter((p) => !p).length;
  if (failures * 2 > turn.passed.length) {
    return finish(state, "gate-failed", `Turn ${t} failed its strictness gate`);
  }
  if (t + 1 >= referenceTurns(state)) return finish(state, "reply-complete");
  if (state.assistantSteps >= state.options.maxAssistantSteps) {
    return finish(
      state,
      "limit-steps",
      `The episode reached ${state.options.maxAssistantSteps} assistant steps`,
    );
  }
  if (state.judgedTurns >= state.options.maxUserTurns) {
    return finish(state, "limit-turns", `The episode reached ${state.options.maxUserTurns} user turns`);
  }
  const content = recordedUsers(state.record)[t + 1]!;
  state.turn = t + 1;
  state.messages.push({ role: "user", content });
  state.meta.push({ turn: t + 1, step: null, source: "record" });
  state.turns.push(newTurn(state.messages.length - 1, state, t + 1));
  state.contextTokens += estimateTokens([{ role: "user", content }]);
  const over = overLimit(state);
  if (over) return over;
  state.phase = "policy";
  return state;
}

/**
 * The episode's verdicts for the reward math (`core/rewards.ts`), for one checklist variant: every
 * reached turn with at least one assistant step, each step's message index and verdict row, and whether
 * the turn ended with a reply. Unjudged cells (an unfinished turn under `no-credit`, or a failed episode)
 * read as false.
 */
export function episodeVerdicts(
  state: EpisodeState,
  variant = 0,
): EpisodeVerdicts & { reason: EndReason | null } {
  const turns = state.turns.flatMap((t, k) => {
    if (t.steps.length === 0) return [];
    const n = itemsOf(state, variant, k).length;
    const sat = t.sat[variant] ?? [];
    return [{
      steps: t.steps.map((messageIndex, s) => ({
        messageIndex,
        sat: Array.from({ length: n }, (_, c) => sat[s]?.[c] === true),
      })),
      complete: t.complete,
    }];
  });
  return { ok: state.end?.ok ?? false, turns, reason: state.end?.reason ?? null };
}
