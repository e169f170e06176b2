/**
 * The episode engine (`cm2-reference.md` §2): one rollout of the policy on one record, as a pure state
 * machine over a JSON-serialisable {@linkcode EpisodeState}. Every LLM call happens outside, between
 * transitions, so a Temporal workflow can make each call its own activity and keep the state in the
 * artifact store:
 *
 * ```
 * startEpisode ─▶ policy ──applyPolicyResult──▶ tools ──applyToolResults──▶ policy …
 *                   │                             (toolCallsToRun, resolveToolCall, parseSimulation)
 *                   └─reply─▶ judge ──applyJudgement──▶ judge (next incremental round)
 *                              (judgeRequests)      ├─▶ policy (gate passed: next recorded user message)
 *                                                   └─▶ done (last turn, gate failed, failure)
 * ```
 *
 * End reasons ({@linkcode END_REASONS}): `reply-complete` (every reference turn done), `gate-failed`
 * (a `required_for_next_turn` item never satisfied; more than half of the variants with several),
 * `format-error` (malformed tool call), `unknown-tool` / `tool-error` (an `error_tool_call` result, with
 * `endOnToolError`), `limit-steps`, `limit-turns`, `limit-context` (also a `length` finish of the policy),
 * and the failures `judge-failure`, `model-failure`, `simulator-failure`, which make the episode `ok=false`.
 *
 * An episode that ends inside a turn (format or tool error, a limit) leaves that turn unfinished. With
 * `unfinishedTurn: "judge"` (default) its steps are judged before the end, with `"no-credit"` they are
 * not judged and read as all false (the effect of the reference's post-hoc bug, §4.5).
 *
 * {@linkcode runEpisode} drives the same transitions in process (tests, the plain-loop benchmark).
 *
 * Pure except `runEpisode`, which calls the injected models. No I/O.
 *
 * @module
 */
import type { EpisodeVerdicts } from "./rewards.ts";
import { turnPassed } from "./rewards.ts";
import type { ChatMessage, ChatRequest, ChatResult, ChatTool, Sampling } from "./llm_types.ts";
import type { ChecklistItem, TrajectoryRecord } from "./records.ts";
import {
  buildToolIndex,
  type PendingCall,
  type SimulationParse,
  type SimulatorOptions,
  type ToolErrorCode,
  type ToolIndex,
  type ToolResolution,
} from "./simulator.ts";
import {
  isErrorToolContent,
  parseStructuredToolCalls,
  parseToolCallText,
  stripToolCallBlocks,
  toChatToolCalls,
  toolCallErrorContent,
} from "./tool_calls.ts";
import {
  fillSkipped,
  judgeCacheKey,
  type JudgeMode,
  judgeRequest,
  majority,
  parseVerdicts,
  promptVersionFor,
  roundCells,
  type SatMatrix,
  type SkipBasis,
} from "./judge.ts";
import { judgeContext } from "./transcript.ts";

/** Closed list of the ways an episode ends. */
export const END_REASONS = [
  "reply-complete",
  "gate-failed",
  "format-error",
  "unknown-tool",
  "tool-error",
  "limit-steps",
  "limit-turns",
  "limit-context",
  "judge-failure",
  "model-failure",
  "simulator-failure",
] as const;

/** One of {@linkcode END_REASONS}. */
export type EndReason = (typeof END_REASONS)[number];

/** End reasons that make an episode failed (`ok=false`): infrastructure, not policy behaviour. */
export const FAILURE_REASONS: readonly EndReason[] = ["judge-failure", "model-failure", "simulator-failure"];

/** End reasons that leave the current turn unfinished (ended inside the turn, not by the judge). */
export const UNFINISHED_REASONS: readonly EndReason[] = [
  "format-error",
  "unknown-tool",
  "tool-error",
  "limit-steps",
  "limit-turns",
  "limit-context",
];

/** Judge settings that shape the state machine. */
export interface EpisodeJudgeOptions {
  /** `exhaustive` (default, the reference) or `incremental`; see `core/judge.ts`. */
  mode?: JudgeMode;
  /** Skip rule of `incremental` mode (default `completed`, safe for every reward level). */
  skipBasis?: SkipBasis;
  /** Votes per cell, majority wins, ties false (default 1). */
  votes?: number;
  /** Items per judge call (default 1, the reference); more batches items of one step. */
  itemsPerCall?: number;
}

/** Options of {@linkcode startEpisode}; every field has a default. */
export interface EpisodeOptions {
  /** Most assistant steps over the whole episode (default 30). */
  maxAssistantSteps?: number;
  /** Most judged user turns (default 30). */
  maxUserTurns?: number;
  /** Context budget in tokens (default 12 000); see {@linkcode estimateTokens}. */
  maxContextTokens?: number;
  /** Most tokens of one policy step (default 8 000); capped by what is left of the context budget. */
  maxResponseTokens?: number;
  /** End the episode when a tool result holds `error_tool_call` (default true, the reference). */
  endOnToolError?: boolean;
  /** Checklist variants used, from the first (default 1). */
  variants?: number;
  /** Unfinished last turn: judge its steps (default) or give it no credit without judging. */
  unfinishedTurn?: "judge" | "no-credit";
  /** Sampling of policy requests (absent fields: the role's defaults). */
  policySampling?: Sampling;
  /** Ask the policy endpoint for completion token ids and logprobs. */
  wantTokens?: boolean;
  judge?: EpisodeJudgeOptions;
  simulator?: SimulatorOptions;
}

/** {@linkcode EpisodeOptions} with every default applied. */
export interface ResolvedEpisodeOptions {
  maxAssistantSteps: number;
  maxUserTurns: number;
  maxContextTokens: number;
  maxResponseTokens: number;
  endOnToolError: boolean;
  variants: number;
  unfinishedTurn: "judge" | "no-credit";
  policySampling: Sampling;
  wantTokens: boolean;
  judge: Required<EpisodeJudgeOptions>;
  simulator: SimulatorOptions;
}

/** What kind of tool result a tool message holds. */
export type ToolResultKind = "replay" | "cached" | "simulated" | "error" | "simulator-failure";

/** Per-message bookkeeping, parallel to {@linkcode EpisodeState.messages}. */
export interface MessageMeta {
  /** 0-based user turn. */
  turn: number;
  /** Assistant step within the turn (0-based) for assistant and tool messages; null otherwise. */
  step: number | null;
  /** `record`: system or recorded user message; `policy`: generated; `tool`: tool result; `engine`: format error. */
  source: "record" | "policy" | "tool" | "engine";
  /** Assistant steps: where the tool calls came from (API `tool_calls` or the text wire format). */
  calls?: "api" | "text";
  /** Tool messages: how the result was produced. */
  result?: ToolResultKind;
  /** Assistant steps: the policy's finish reason, version and completion tokens. */
  finishReason?: ChatResult["finishReason"];
  policyVersion?: string;
  completion?: { tokenIds: number[]; logprobs?: number[] };
}

/** One reached turn. */
export interface TurnState {
  /** Message index of the turn's user message. */
  userIndex: number;
  /** Message indices of the turn's assistant steps, in order. */
  steps: number[];
  /** The turn ended with a reply (no tool call). */
  complete: boolean;
  /** Every cell of every variant has a verdict (or the turn will never be judged). */
  judged: boolean;
  /** Strictness gate per variant, once judged. */
  passed: boolean[] | null;
  /** Verdicts: `sat[variant][step][item]`, null while unjudged. */
  sat: SatMatrix[];
}

/** Counters of one episode. */
export interface EpisodeMetrics {
  policyCalls: number;
  promptTokens: number;
  completionTokens: number;
  toolCalls: number;
  replayHits: number;
  cacheHits: number;
  simulated: number;
  toolErrors: number;
  simulatorFailures: number;
  judgeVerdicts: number;
  judgeCellsSkipped: number;
}

/** How and why the episode ended. */
export interface EpisodeEnd {
  reason: EndReason;
  ok: boolean;
  detail?: string;
}

/** The whole state of one episode; plain JSON. */
export interface EpisodeState {
  version: 1;
  record: TrajectoryRecord;
  options: ResolvedEpisodeOptions;
  /** Plain OpenAI messages, as the trainer takes them. */
  messages: ChatMessage[];
  /** Turn/step bookkeeping per message. */
  meta: MessageMeta[];
  /** Tools as the policy sees them. */
  tools: ChatTool[];
  phase: "policy" | "tools" | "judge" | "done";
  /** Current user turn (0-based). */
  turn: number;
  /** Assistant steps so far, over all turns. */
  assistantSteps: number;
  /** Turns judged so far (the reference's user-turn counter). */
  judgedTurns: number;
  /** Context size in tokens: the last policy usage where given, plus estimates of later messages. */
  contextTokens: number;
  turns: TurnState[];
  /** Calls of the last assistant step, while `phase` is `tools`. */
  pendingCalls: PendingCall[];
  /** Set while an unfinished turn is judged before the episode ends with this reason. */
  pendingEnd: EpisodeEnd | null;
  end: EpisodeEnd | null;
  metrics: EpisodeMetrics;
}

/** Where a transition leads. */
export type Next = "policy" | "tools" | "judge-turn" | "end";

/** A transition's result. */
export interface Transition {
  state: EpisodeState;
  next: Next;
}

/**
 * Token estimate used where the endpoint reports no usage: characters / 4, rounded up, over message
 * contents, tool-call names and arguments, and the tool schemas (JSON).
 */
export function estimateTokens(messages: readonly ChatMessage[], tools: readonly ChatTool[] = []): number {
  let chars = 0;
  for (const m of messages) {
    chars += m.content.length;
    for (const c of m.tool_calls ?? []) chars += c.function.name.length + c.function.arguments.length;
  }
  for (const t of tools) chars += JSON.stringify(t).length;
  return Math.ceil(chars / 4);
}

/** Apply the defaults to {@linkcode EpisodeOptions}. */
export function resolveEpisodeOptions(opts: EpisodeOptions = {}): ResolvedEpisodeOptions {
  const positive = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`Episode option ${name} is ${v}, expected an integer >= 1`);
    }
    return v;
  };
  return {
    maxAssistantSteps: positive("maxAssistantSteps", opts.maxAssistantSteps ?? 30),
    maxUserTurns: positive("maxUserTurns", opts.maxUserTurns ?? 30),
    maxContextTokens: positive("maxContextTokens", opts.maxContextTokens ?? 12_000),
    maxResponseTokens: positive("maxResponseTokens", opts.maxResponseTokens ?? 8_000),
    endOnToolError: opts.endOnToolError ?? true,
    variants: positive("variants", opts.variants ?? 1),
    unfinishedTurn: opts.unfinishedTurn ?? "judge",
    policySampling: { ...opts.policySampling },
    wantTokens: opts.wantTokens ?? false,
    judge: {
      mode: opts.judge?.mode ?? "exhaustive",
      skipBasis: opts.judge?.skipBasis ?? "completed",
      votes: positive("judge.votes", opts.judge?.votes ?? 1),
      itemsPerCall: positive("judge.itemsPerCall", opts.judge?.itemsPerCall ?? 1),
    },
    simulator: { ...opts.simulator },
  };
}

/** The recorded user messages of a record, in order (the user replay of §2.2). */
function recordedUsers(record: TrajectoryRecord): string[] {
  return record.messages.filter((m) => m.role === "user").map((m) => m.content);
}

/** Items of turn `t` in variant `v`. */
function itemsOf(state: EpisodeState, v: number, t: number): ChecklistItem[] {
  const items = state.record.checklists[v]?.[t];
  if (!items) {
    throw new Error(`Record ${state.record.uuid} has no checklist items for variant ${v}, turn ${t}`);
  }
  return items;
}

function variantCount(state: EpisodeState): number {
  return Math.min(state.options.variants, state.record.checklists.length);
}

function referenceTurns(state: EpisodeState): number {
  return state.record.checklists[0]!.length;
}

/** Deep copy through JSON: the state is plain JSON by design, and this works in any sandbox. */
function clone(state: EpisodeState): EpisodeState {
  return JSON.parse(JSON.stringify(state)) as EpisodeState;
}

function newTurn(userIndex: number, state: EpisodeState, t: number): TurnState {
  const sat: SatMatrix[] = [];
  for (let v = 0; v < variantCount(state); v++) {
    itemsOf(state, v, t);
    sat.push([]);
  }
  return { userIndex, steps: [], complete: false, judged: false, passed: null, sat };
}

/**
 * Start an episode: the record's system message (if any), its tools and its first user message.
 * Throws when the record has no checklist or its checklist turn count differs from its user messages.
 */
export function startEpisode(record: TrajectoryRecord, opts: EpisodeOptions = {}): EpisodeState {
  const options = resolveEpisodeOptions(opts);
  const first = record.checklists[0];
  if (!first || first.length === 0) throw new Error(`Record ${record.uuid} has no checklist`);
  const users = recordedUsers(record);
  if (users.length !== first.length) {
    throw new Error(
      `Record ${record.uuid} has ${users.length} user messages but ${first.length} checklist turns`,
    );
  }
  const messages: ChatMessage[] = [];
  const meta: MessageMeta[] = [];
  const sys = record.messages[0];
  if (sys?.role === "system") {
    messages.push({ role: "system", content: sys.content });
    meta.push({ turn: 0, step: null, source: "record" });
  }
  messages.push({ role: "user", content: users[0]! });
  meta.push({ turn: 0, step: null, source: "record" });
  const tools: ChatTool[] = record.tools.map((t) => ({
    type: "function",
    function: {
      name: t.function.name,
      description: t.function.description,
      parameters: t.function.parameters,
    },
  }));
  const state: EpisodeState = {
    version: 1,
    record,
    options,
    messages,
    meta,
    tools,
    phase: "policy",
    turn: 0,
    assistantSteps: 0,
    judgedTurns: 0,
    contextTokens: estimateTokens(messages, tools),
    turns: [],
    pendingCalls: [],
    pendingEnd: null,
    end: null,
    metrics: {
      policyCalls: 0,
      promptTokens: 0,
      completionTokens: 0,
      toolCalls: 0,
      replayHits: 0,
      cacheHits: 0,
      simulated: 0,
      toolErrors: 0,
      simulatorFailures: 0,
      judgeVerdicts: 0,
      judgeCellsSkipped: 0,
    },
  };
  state.turns.push(newTurn(messages.length - 1, state, 0));
  if (state.contextTokens + 1 >= options.maxContextTokens) return finish(state, "limit-context").state;
  return state;
}

function expectPhase(state: EpisodeState, phase: EpisodeState["phase"], what: string): void {
  if (state.phase !== phase) {
    throw new Error(`${what} needs phase ${phase}, the episode is in phase ${state.phase}`);
  }
}

/**
 * The next policy request: the messages so far (text-written tool calls stripped from the content of
 * their step, since the structured `tool_calls` carry them), the tools, the sampling, and `max_tokens` =
 * min(`maxResponseTokens`, context budget − context − 1).
 */
export function policyRequest(state: EpisodeState): ChatRequest {
  expectPhase(state, "policy", "policyRequest()");
  const messages = state.messages.map((m, i) =>
    state.meta[i]?.calls === "text" ? { ...m, content: stripToolCallBlocks(m.content) } : m
  );
  const budget = state.options.maxContextTokens - state.contextTokens - 1;
  const req: ChatRequest = {
    messages,
    sampling: {
      ...state.options.policySampling,
      max_tokens: Math.max(1, Math.min(state.options.maxResponseTokens, budget)),
    },
  };
  if (state.tools.length > 0) req.tools = state.tools;
  if (state.options.wantTokens) req.wantTokens = true;
  return req;
}

/**
 * Record a policy step. API `tool_calls` win; otherwise the text is parsed for wire-format calls. A
 * malformed call appends an `error_tool_call` tool message and ends with `format-error`; a `length`
 * finish ends with `limit-context`; calls lead to `tools`; a reply ends the turn (`judge-turn`).
 */
export function applyPolicyResult(state0: EpisodeState, result: ChatResult): Transition {
  expectPhase(state0, "policy", "applyPolicyResult()");
  const state = clone(state0);
  const turn = state.turns[state.turn]!;
  const step = turn.steps.length;
  state.assistantSteps++;
  state.metrics.policyCalls++;
  state.metrics.promptTokens += result.usage.promptTokens;
  state.metrics.completionTokens += result.usage.completionTokens;

  const meta: MessageMeta = { turn: state.turn, step, source: "policy", finishReason: result.finishReason };
  if (result.policyVersion !== undefined) meta.policyVersion = result.policyVersion;
  if (result.completion) meta.completion = result.completion;
  const message: ChatMessage = { role: "assistant", content: result.content };
  const idPrefix = `call_${state.assistantSteps - 1}`;
  const parse = result.finishReason === "length"
    ? { kind: "none" as const }
    : result.toolCalls.length > 0
    ? parseStructuredToolCalls(result.toolCalls, idPrefix)
    : parseToolCallText(result.content, idPrefix);
  if (parse.kind === "calls") {
    message.tool_calls = toChatToolCalls(parse.calls);
    meta.calls = result.toolCalls.length > 0 ? "api" : "text";
  }
  turn.steps.push(state.messages.length);
  state.messages.push(message);
  state.meta.push(meta);
  const reported = result.usage.promptTokens + result.usage.completionTokens;
  state.contextTokens = reported > 0 ? reported : state.contextTokens + estimateTokens([message]);

  if (result.finishReason === "length") {
    return finish(state, "limit-context", "The policy step hit its token limit");
  }
  if (parse.kind === "error") {
    const content = toolCallErrorContent(parse.message);
    state.messages.push({ role: "tool", content, tool_call_id: `${idPrefix}_error` });
    state.meta.push({ turn: state.turn, step, source: "engine", result: "error" });
    state.contextTokens += estimateTokens([{ role: "tool", content }]);
    return finish(state, "format-error", parse.message);
  }
  if (parse.kind === "calls") {
    state.pendingCalls = parse.calls.map((c, index) => ({
      index,
      id: c.id,
      name: c.name,
      arguments: c.arguments,
      turn: state.turn,
    }));
    state.phase = "tools";
    return { state, next: "tools" };
  }
  turn.complete = true;
  if (state.judgedTurns >= state.options.maxUserTurns) {
    return finish(state, "limit-turns", `The episode reached ${state.options.maxUserTurns} user turns`);
  }
  return enterJudging(state, null);
}

/** A policy call that failed for good (after retries): the episode ends with `model-failure`, ok=false. */
export function applyPolicyFailure(state: EpisodeState, error: string): Transition {
  expectPhase(state, "policy", "applyPolicyFailure()");
  return finish(clone(state), "model-failure", error);
}

/** The calls of the last assistant step, in call order. */
export function toolCallsToRun(state: EpisodeState): PendingCall[] {
  expectPhase(state, "tools", "toolCallsToRun()");
  return state.pendingCalls.map((c) => ({ ...c }));
}

/** The simulator index of the episode's record (cheap; build it once per activity). */
export function episodeToolIndex(state: EpisodeState): ToolIndex {
  return buildToolIndex(state.record, state.options.simulator);
}

/** The result of one call, as {@linkcode applyToolResults} takes it. */
export interface ToolResult {
  /** {@linkcode PendingCall.index}. */
  index: number;
  kind: ToolResultKind;
  content: string;
  code?: ToolErrorCode;
}

/** A result from a resolution that needed no LLM (`replay`, `cached`, `error`). */
export function toolResultFromResolution(
  call: PendingCall,
  resolution: Exclude<ToolResolution, { kind: "simulate" }>,
): ToolResult {
  const out: ToolResult = { index: call.index, kind: resolution.kind, content: resolution.content };
  if (resolution.kind === "error") out.code = resolution.code;
  return out;
}

/** A result from a simulation (its parse, or a failed call as `{ ok: false, error }`). */
export function toolResultFromSimulation(call: PendingCall, parsed: SimulationParse): ToolResult {
  return parsed.ok
    ? { index: call.index, kind: "simulated", content: parsed.content }
    : { index: call.index, kind: "simulator-failure", content: JSON.stringify({ error: parsed.error }) };
}

/**
 * Append the tool messages (call order) and decide what follows: a simulator failure ends with
 * `simulator-failure` (ok=false); with `endOnToolError`, any result holding `error_tool_call` ends with
 * `unknown-tool` (if a call named an unknown tool) or `tool-error`; then the context and step limits;
 * else the policy goes on.
 */
export function applyToolResults(state0: EpisodeState, results: readonly ToolResult[]): Transition {
  expectPhase(state0, "tools", "applyToolResults()");
  const state = clone(state0);
  const calls = state.pendingCalls;
  const byIndex = new Map(results.map((r) => [r.index, r]));
  if (
    byIndex.size !== results.length || results.length !== calls.length ||
    calls.some((c) => !byIndex.has(c.index))
  ) {
    throw new Error(
      `applyToolResults() got results for calls ${[...byIndex.keys()]}, expected ${
        calls.map((c) => c.index)
      }`,
    );
  }
  const step = state.turns[state.turn]!.steps.length - 1;
  const added: ChatMessage[] = [];
  for (const call of calls) {
    const r = byIndex.get(call.index)!;
    const message: ChatMessage = { role: "tool", content: r.content, tool_call_id: call.id };
    state.messages.push(message);
    state.meta.push({ turn: state.turn, step, source: "tool", result: r.kind });
    added.push(message);
    state.metrics.toolCalls++;
    if (r.kind === "replay") state.metrics.replayHits++;
    if (r.kind === "cached") state.metrics.cacheHits++;
    if (r.kind === "simulated") state.metrics.simulated++;
    if (r.kind === "error") state.metrics.toolErrors++;
    if (r.kind === "simulator-failure") state.metrics.simulatorFailures++;
  }
  state.pendingCalls = [];
  state.contextTokens += estimateTokens(added);
  const failed = results.find((r) => r.kind === "simulator-failure");
  if (failed) return finish(state, "simulator-failure", failed.content);
  const errors = results.filter((r) => r.kind === "error" || isErrorToolContent(r.content));
  if (errors.length > 0 && state.options.endOnToolError) {
    const unknown = errors.some((r) => r.code === "unknown-tool");
    return finish(state, unknown ? "unknown-tool" : "tool-error", errors[0]!.content);
  }
  if (state.contextTokens + 1 >= state.options.maxContextTokens) {
    return finish(state, "limit-context", `The context reached ${state.contextTokens} tokens`);
  }
  if (state.assistantSteps >= state.options.maxAssistantSteps) {
    return finish(
      state,
      "limit-steps",
      `The episode reached ${state.options.maxAssistantSteps} assistant steps`,
    );
  }
  state.phase = "policy";
  return { state, next: "policy" };
}

/**
 * End the episode, or first judge its unfinished current turn (`unfinishedTurn: "judge"`). Mutates and
 * returns `state` (callers pass a clone).
 */
function finish(state: EpisodeState, reason: EndReason, detail?: string): Transition {
  const end: EpisodeEnd = { reason, ok: !FAILURE_REASONS.includes(reason) };
  if (detail !== undefined) end.detail = detail.length > 500 ? `${detail.slice(0, 500)}…` : detail;
  state.pendingCalls = [];
  const turn = state.turns[state.turn];
  if (
    UNFINISHED_REASONS.includes(reason) && state.options.unfinishedTurn === "judge" && turn &&
    turn.steps.length > 0 && !turn.judged
  ) {
    return enterJudging(state, end);
  }
  state.phase = "done";
  state.end = end;
  state.pendingEnd = null;
  return { state, next: "end" };
}

function enterJudging(state: EpisodeState, pendingEnd: EpisodeEnd | null): Transition {
  const turn = state.turns[state.turn]!;
  turn.sat = turn.sat.map((_, v) => {
    const n = itemsOf(state, v, state.turn).length;
    return turn.steps.map(() => new Array<boolean | null>(n).fill(null));
  });
  state.pendingEnd = pendingEnd;
  state.phase = "judge";
  fillTurn(state);
  return { state, next: "judge-turn" };
}

function fillTurn(state: EpisodeState): void {
  const turn = state.turns[state.turn]!;
  const { mode, skipBasis } = state.options.judge;
  turn.sat = turn.sat.map((sat, v) => {
    const r = fillSkipped(sat, itemsOf(state, v, state.turn), mode, skipBasis);
    state.metrics.judgeCellsSkipped += r.filled;
    return r.sat;
  });
}

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
}

/**
 * The judge calls of the current round for one checklist variant of `turn` (which must be the turn being
 * judged): one task per (step, batch of up to `itemsPerCall` items, vote).
 */
export function judgeRequests(
  state: EpisodeState,
  turn: number,
  variant: number,
  opts: JudgeRequestOptions,
): JudgeTask[] {
  expectPhase(state, "judge", "judgeRequests()");
  if (turn !== state.turn) {
    throw new Error(`judgeRequests() asked for turn ${turn}, the episode judges turn ${state.turn}`);
  }
  const ts = state.turns[turn]!;
  const sat = ts.sat[variant];
  if (!sat) {
    throw new Error(`judgeRequests() asked for variant ${variant}, the episode uses ${ts.sat.length}`);
  }
  const items = itemsOf(state, variant, turn);
  const { votes, itemsPerCall, mode } = state.options.judge;
  const byStep = new Map<number, number[]>();
  for (const cell of roundCells(sat, mode)) {
    byStep.set(cell.step, [...(byStep.get(cell.step) ?? []), cell.item]);
  }
  const tasks: JudgeTask[] = [];
  for (const [step, cells] of byStep) {
    const messageIndex = ts.steps[step]!;
    const context = judgeContext(state.messages, ts.userIndex, messageIndex);
    for (let k = 0; k < cells.length; k += itemsPerCall) {
      const chunk = cells.slice(k, k + itemsPerCall);
      const judged = chunk.map((c) => items[c]!);
      const request = judgeRequest(judged, context, opts.sampling);
      for (let vote = 0; vote < votes; vote++) {
        tasks.push({
          key: judgeCacheKey(opts.hash, { model: opts.model, items: judged, context, vote }),
          turn,
          variant,
          step,
          messageIndex,
          items: chunk,
          itemIds: judged.map((i) => i.id),
          vote,
          promptVersion: promptVersionFor(judged.length),
          request,
        });
      }
    }
  }
  return tasks;
}

/** All judge calls of the current round, over every variant in use. */
export function judgeRoundRequests(state: EpisodeState, opts: JudgeRequestOptions): JudgeTask[] {
  return state.turns[state.turn]!.sat.flatMap((_, v) => judgeRequests(state, state.turn, v, opts));
}

/** The answer to one {@linkcode JudgeTask}. */
export type JudgeVerdict =
  & Pick<JudgeTask, "variant" | "step" | "items" | "vote">
  & ({ ok: true; answers: boolean[] } | { ok: false; error: string });

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
export function applyJudgement(state0: EpisodeState, verdicts: readonly JudgeVerdict[]): Transition {
  expectPhase(state0, "judge", "applyJudgement()");
  const state = clone(state0);
  const t = state.turn;
  const turn = state.turns[t]!;
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
  }
  state.metrics.judgeVerdicts += verdicts.length;
  fillTurn(state);
  if (turn.sat.some((sat) => roundCells(sat, mode).length > 0)) return { state, next: "judge-turn" };

  turn.judged = true;
  turn.passed = turn.sat.map((sat, v) =>
    turnPassed(itemsOf(state, v, t), sat.map((row) => ({ sat: row.map((x) => x === true) })))
  );
  if (state.pendingEnd) {
    const end = state.pendingEnd;
    state.pendingEnd = null;
    state.phase = "done";
    state.end = end;
    return { state, next: "end" };
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
  if (state.contextTokens + 1 >= state.options.maxContextTokens) {
    return finish(state, "limit-context", `The context reached ${state.contextTokens} tokens`);
  }
  state.phase = "policy";
  return { state, next: "policy" };
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
