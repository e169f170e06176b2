/**
 * The episode's state machine (`cm2-reference.md` §2): one rollout of the policy on one record, as pure
 * transitions over a JSON-serialisable {@linkcode EpisodeState}; each returns the new state, whose `phase` says
 * what follows. Every LLM call happens outside, between transitions. Drivers do not call these directly: the
 * engine (`core/engine.ts`, `advance`) runs them and says what the episode waits for. The judge phase is in
 * `core/episode_judge.ts`, the options in `core/episode_options.ts`.
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
 * Pure; no I/O.
 *
 * @module
 */
import type { ChatMessage, ChatRequest, ChatResult, ChatTool } from "./llm_types.ts";
import type { ChecklistItem, TrajectoryRecord } from "./records.ts";
import {
  buildToolIndex,
  type PendingCall,
  type SimulationParse,
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
import { fillSkipped, type SatMatrix } from "./judge.ts";
import { type CheckWindow, checkWindow, evaluateCheck } from "./checks.ts";
import {
  type EpisodeOptions,
  type ResolvedEpisodeOptions,
  resolveEpisodeOptions,
} from "./episode_options.ts";

export type { EpisodeJudgeOptions, EpisodeOptions, ResolvedEpisodeOptions } from "./episode_options.ts";
export { resolveEpisodeOptions } from "./episode_options.ts";

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
  "limit-response",
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
  "limit-response",
];

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
  /**
   * Where each verdict came from, `by[variant][step]` one character per item: `p` a program (the item's check,
   * or false for a focus part absent from the step, `skipAbsentFocus`), `m` the model judge, `s` skipped by the incremental rule (filled with true), `-` not answered. Absent before the
   * turn is judged, and in states written before checks existed.
   */
  by?: string[][];
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
  /**
   * Verdicts answered by a program (a check, or an absent focus part), with no judge call (absent in states
   * written before checks).
   */
  judgeCellsChecked?: number;
  /** Judge answers that did not parse and were asked again (absent in states written before retries). */
  judgeRetries?: number;
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
  /**
   * The first prompt's tokens (system, tools, first user message): what follows it is the episode's
   * response, capped by `maxEpisodeResponseTokens`. Absent in states written before the cap existed.
   */
  promptTokens?: number;
  turns: TurnState[];
  /** Calls of the last assistant step, while `phase` is `tools`. */
  pendingCalls: PendingCall[];
  /** While waiting for tools: the results known without a model, by call position (null: simulating). */
  toolResults?: (ToolResult | null)[];
  /** While waiting for the judge: answers of the round's tasks found in the verdict cache (null: asked). */
  judgeAnswers?: (boolean[] | null)[];
  /** Set while an unfinished turn is judged before the episode ends with this reason. */
  pendingEnd: EpisodeEnd | null;
  end: EpisodeEnd | null;
  metrics: EpisodeMetrics;
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

/** The recorded user messages of a record, in order (the user replay of §2.2). */
/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function recordedUsers(record: TrajectoryRecord): string[] {
  return record.messages.filter((m) => m.role === "user").map((m) => m.content);
}

/** Items of turn `t` in variant `v`. */
/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function itemsOf(state: EpisodeState, v: number, t: number): ChecklistItem[] {
  const items = state.record.checklists[v]?.[t];
  if (!items) {
    throw new Error(`Record ${state.record.uuid} has no checklist items for variant ${v}, turn ${t}`);
  }
  return items;
}

function variantCount(state: EpisodeState): number {
  return Math.min(state.options.variants, state.record.checklists.length);
}

/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function referenceTurns(state: EpisodeState): number {
  return state.record.checklists[0]!.length;
}

/**
 * Deep copy through JSON (the state is plain JSON by design, and this works in any sandbox), except the record
 * and the tools, which no transition changes and which are shared. Also used by the engine and the store.
 */
export function clone(state: EpisodeState): EpisodeState {
  const { record, tools, ...rest } = state;
  return { ...JSON.parse(JSON.stringify(rest)), record, tools } as EpisodeState;
}

/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function newTurn(userIndex: number, state: EpisodeState, t: number): TurnState {
  const sat: SatMatrix[] = [];
  for (let v = 0; v < variantCount(state); v++) {
    itemsOf(state, v, t);
    sat.push([]);
  }
  return { userIndex, steps: [], complete: false, judged: false, passed: null, sat };
}

/** The record's tools as the policy sees them. */
export function toolsOf(record: TrajectoryRecord): ChatTool[] {
  return record.tools.map((t) => ({
    type: "function",
    function: {
      name: t.function.name,
      description: t.function.description,
      parameters: t.function.parameters,
    },
  }));
}

/** The messages of an episode's first prompt: the record's system message (if any) and its first user message. */
function firstPrompt(record: TrajectoryRecord): ChatMessage[] {
  const messages: ChatMessage[] = [];
  const sys = record.messages[0];
  if (sys?.role === "system") messages.push({ role: "system", content: sys.content });
  const user = record.messages.find((m) => m.role === "user");
  if (user) messages.push({ role: "user", content: user.content });
  return messages;
}

/**
 * The estimated tokens of an episode's first prompt (system message, tools, first user message), as
 * {@linkcode estimateTokens} counts them; what `limits.maxPromptTokens` filters on.
 */
export function promptTokensOf(record: TrajectoryRecord): number {
  return estimateTokens(firstPrompt(record), toolsOf(record));
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
  const messages = firstPrompt(record);
  const meta: MessageMeta[] = messages.map(() => ({ turn: 0, step: null, source: "record" }));
  const tools = toolsOf(record);
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
    promptTokens: estimateTokens(messages, tools),
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
      judgeCellsChecked: 0,
      judgeRetries: 0,
    },
  };
  state.turns.push(newTurn(messages.length - 1, state, 0));
  return overLimit(state) ?? state;
}

/**
 * The episode's response so far: every token after its first prompt (assistant steps, tool results, later
 * user messages), as the released run counts its response length. null for a state without `promptTokens`.
 */
export function responseTokens(state: EpisodeState): number | null {
  return state.promptTokens === undefined ? null : Math.max(0, state.contextTokens - state.promptTokens);
}

/**
 * Ends the episode when the context budget or the episode's response budget is spent (`limit-context`,
 * `limit-response`: the current turn is unfinished, later turns never happen and earn nothing); else null.
 * Mutates `state` (callers pass a clone).
 * @internal Shared with the judge phase (`episode_judge.ts`).
 */
export function overLimit(state: EpisodeState): EpisodeState | null {
  if (state.contextTokens + 1 >= state.options.maxContextTokens) {
    return finish(state, "limit-context", `The context reached ${state.contextTokens} tokens`);
  }
  const response = responseTokens(state);
  if (response !== null && response + 1 >= state.options.maxEpisodeResponseTokens) {
    return finish(state, "limit-response", `The episode's response reached ${response} tokens`);
  }
  return null;
}

/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function expectPhase(state: EpisodeState, phase: EpisodeState["phase"], what: string): void {
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
  const response = responseTokens(state);
  const budget = Math.min(
    state.options.maxContextTokens - state.contextTokens - 1,
    response === null ? Infinity : state.options.maxEpisodeResponseTokens - response - 1,
  );
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
export function applyPolicyResult(state0: EpisodeState, result: ChatResult): EpisodeState {
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
    const over = overLimit(state);
    return over ?? finish(state, "limit-context", "The policy step hit its token limit");
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
    return state;
  }
  turn.complete = true;
  if (state.judgedTurns >= state.options.maxUserTurns) {
    return finish(state, "limit-turns", `The episode reached ${state.options.maxUserTurns} user turns`);
  }
  return enterJudging(state, null);
}

/** A policy call that failed for good (after retries): the episode ends with `model-failure`, ok=false. */
export function applyPolicyFailure(state: EpisodeState, error: string): EpisodeState {
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
export function applyToolResults(state0: EpisodeState, results: readonly ToolResult[]): EpisodeState {
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
  const over = overLimit(state);
  if (over) return over;
  if (state.assistantSteps >= state.options.maxAssistantSteps) {
    return finish(
      state,
      "limit-steps",
      `The episode reached ${state.options.maxAssistantSteps} assistant steps`,
    );
  }
  state.phase = "policy";
  return state;
}

/**
 * End the episode, or first judge its unfinished current turn (`unfinishedTurn: "judge"`). Mutates and
 * returns `state` (callers pass a clone).
 */
/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function finish(state: EpisodeState, reason: EndReason, detail?: string): EpisodeState {
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
  return state;
}

/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function enterJudging(state: EpisodeState, pendingEnd: EpisodeEnd | null): EpisodeState {
  const turn = state.turns[state.turn]!;
  turn.sat = turn.sat.map((_, v) => {
    const n = itemsOf(state, v, state.turn).length;
    return turn.steps.map(() => new Array<boolean | null>(n).fill(null));
  });
  turn.by = turn.sat.map((sat) => sat.map((row) => "-".repeat(row.length)));
  state.pendingEnd = pendingEnd;
  state.phase = "judge";
  applyChecks(state);
  fillTurn(state);
  return state;
}

/** Records where the verdict of cell (variant, step, item) of the current turn came from. */
/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function markSource(turn: TurnState, v: number, s: number, c: number, source: "p" | "m" | "s"): void {
  const row = turn.by?.[v]?.[s];
  if (row === undefined) return;
  turn.by![v]![s] = row.slice(0, c) + source + row.slice(c + 1);
}

/**
 * Whether an item's focus part is absent from a step's window (see `skipAbsentFocus`): a judge must then answer
 * false. `assistant.content.thinking` is never taken for absent.
 */
function focusAbsent(item: ChecklistItem, messages: readonly ChatMessage[], window: CheckWindow): boolean {
  const part = messages.slice(window.start, window.end);
  const steps = part.filter((m) => m.role === "assistant");
  switch (item.focus_on) {
    case "assistant.tool_calls":
      return !steps.some((m) => m.tool_calls?.length);
    case "tool.content":
      return !part.some((m) => m.role === "tool");
    case "assistant.content.user_visible_reply":
      return steps.every((m) => m.tool_calls?.length);
    default:
      return false;
  }
}

/**
 * Answers, before any judge round, every cell of the current turn whose item carries a program check
 * (`core/checks.ts`), and with `skipAbsentFocus` every cell whose item's focus part is absent from the step
 * (false): both read what the judge would read for that step, so the reward math is unchanged. A state
 * written before `skipAbsentFocus` existed keeps asking the judge.
 */
function applyChecks(state: EpisodeState): void {
  const turn = state.turns[state.turn]!;
  const absent = state.options.judge.skipAbsentFocus === true;
  turn.sat.forEach((sat, v) => {
    const items = itemsOf(state, v, state.turn);
    if (!absent && !items.some((it) => it.check)) return;
    sat.forEach((row, s) => {
      const window = checkWindow(state.messages, turn.userIndex, turn.steps[s]!);
      items.forEach((item, c) => {
        if (row[c] !== null) return;
        if (item.check) row[c] = evaluateCheck(item.check, state.messages, window);
        else if (absent && focusAbsent(item, state.messages, window)) row[c] = false;
        else return;
        markSource(turn, v, s, c, "p");
        state.metrics.judgeCellsChecked = (state.metrics.judgeCellsChecked ?? 0) + 1;
      });
    });
  });
}

/** @internal Shared with the judge phase (`episode_judge.ts`). */
export function fillTurn(state: EpisodeState): void {
  const turn = state.turns[state.turn]!;
  const { mode, skipBasis } = state.options.judge;
  turn.sat = turn.sat.map((sat, v) => {
    const r = fillSkipped(sat, itemsOf(state, v, state.turn), mode, skipBasis);
    state.metrics.judgeCellsSkipped += r.filled;
    if (r.filled > 0) {
      r.sat.forEach((row, s) =>
        row.forEach((x, c) => x !== null && sat[s]?.[c] === null && markSource(turn, v, s, c, "s"))
      );
    }
    return r.sat;
  });
}
