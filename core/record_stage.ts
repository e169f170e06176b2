/**
 * What every durable per-record LLM data stage shares, pure: the stage contract ({@linkcode RecordStage}:
 * prompt, answer check, what an accepted or exhausted record becomes), the dialogue as a stage model reads
 * it, JSON-object extraction with precise problems, and the retry conversation (the previous answer and
 * its problems). The two stages are `core/quality_filter.ts` (LLM judge of record quality) and
 * `core/cot_compress.ts` (reasoning compression); the workflow and activities that run them are
 * `workflows/record_stage.ts` and `activities/record_stage.ts`.
 *
 * @module
 */
import type { z } from "zod";
import { formatLabelIssue, type LabelIssue, type PriorAttempt } from "./labeling.ts";
import type { ChatMessage } from "./llm_types.ts";
import { preview, type TrajectoryRecord } from "./records.ts";

/** The stages built on the record-stage workflow. */
export const STAGE_KINDS = ["filter", "compress"] as const;

/** One stage kind: `filter` (LLM quality judge) or `compress` (CoT compression). */
export type StageKind = (typeof STAGE_KINDS)[number];

/** A problem with a stage model's answer: a JSON path into the answer (or the record), what, the value. */
export type StageIssue = LabelIssue;

/** `path: message (found value)`, the form used in feedback, reports and logs. */
export const formatStageIssue: (issue: StageIssue) => string = formatLabelIssue;

/** A failed earlier attempt shown to the model on the next try. */
export type StagePrior = PriorAttempt;

/** Parameters of a stage run that change what is asked (and so are part of its prompt version). */
export interface StageParams {
  /** `compress`: the share of its original length (in estimated tokens) that a reasoning may keep. */
  target?: number;
}

/**
 * Why a record was not taken as it is, in the line format of `cm2 data filter --rejected`
 * (`{uuid, reasons: [...]}`): the criterion, where, and what. LLM stages add the problem kind and turn.
 */
export interface StageReason {
  criterion: string;
  path: string;
  message: string;
  kind?: string;
  turn?: number;
}

/** What a finished record becomes in the stage's output. */
export interface StageDecision {
  /** Stage-specific outcome, one of the stage's {@linkcode RecordStage.statuses}. */
  status: string;
  /** `keep`: the input record as it is; `rewrite`: {@linkcode record}; `drop`: not in the output. */
  output: "keep" | "rewrite" | "drop";
  /** The new record when `output` is `rewrite`. */
  record?: TrajectoryRecord;
  /** What the accepted answer said, kept in the stored result (filter: the verdict). */
  details?: unknown;
  /** Why (empty when the record passes as it is). */
  reasons: StageReason[];
}

/** The outcome of checking an answer: the value it holds, or every problem found. */
export type StageCheck<V> = { ok: true; value: V } | { ok: false; errors: StageIssue[] };

/**
 * One per-record LLM stage: everything that differs between stages, as pure functions. The activities
 * store attempts and results and the workflow schedules them; neither knows what a stage asks.
 */
export interface RecordStage<V> {
  kind: StageKind;
  /** `derivedFrom.step` of the output dataset. */
  step: string;
  /**
   * What the output holds for a record without a result (its calls failed, or the run stopped first):
   * the record as it is, or nothing.
   */
  withoutResult: "keep" | "drop";
  /** Every status a decision may carry, in report order. */
  statuses: readonly string[];
  /** Name of the JSON-schema response format. */
  schemaName: string;
  /** The answer's shape, sent as a JSON-schema response format where the endpoint takes one. */
  responseSchema: z.ZodType;
  /** The prompt version a run of these parameters stores its results under (part of every key). */
  promptVersion(params: StageParams): string;
  /** Checks the run's parameters; returns the problem, or undefined. */
  checkParams(params: StageParams): string | undefined;
  /** A decision that needs no model (nothing to do for this record), or undefined. */
  settle(record: TrajectoryRecord, params: StageParams): StageDecision | undefined;
  /** The conversation of one attempt; on a retry it ends with the previous answer and its problems. */
  messages(record: TrajectoryRecord, params: StageParams, prior?: StagePrior): ChatMessage[];
  /** Checks a raw answer against the schema and the stage's own rules. */
  check(
    text: string,
    record: TrajectoryRecord,
    params: StageParams,
    opts: { truncated: boolean },
  ): StageCheck<V>;
  /** What a record becomes when an answer passed. */
  accept(value: V, record: TrajectoryRecord, params: StageParams): StageDecision;
  /** What a record becomes when no attempt passed (`errors`: the last attempt's problems). */
  exhausted(record: TrajectoryRecord, errors: readonly StageIssue[], attempts: number): StageDecision;
  /** A number measured on input and output records for the summary (compress: reasoning tokens). */
  measure?(record: TrajectoryRecord): number;
}

// ---------------------------------------------------------------------------------------------
// The dialogue as a stage model reads it

/** How {@linkcode renderDialogue} shows assistant reasoning. */
export interface RenderOptions {
  /** Replace each `<think>…</think>` block by this note (given the message index), instead of showing it. */
  hideReasoning?: (index: number) => string;
}

const THINK_BLOCK = /<think>[\s\S]*?<\/think>/;

/**
 * The tools and the messages of a record as plain text: each message headed by its index in
 * `record.messages`, its user turn (0-based, counted from the first user message) and its role; tool
 * calls with their id, name and argument string verbatim.
 */
export function renderDialogue(record: TrajectoryRecord, opts: RenderOptions = {}): string {
  const tools = record.tools.map((t) =>
    `- ${t.function.name}: ${t.function.description || "(no description)"}\n  parameters: ${
      JSON.stringify(t.function.parameters)
    }`
  );
  const lines: string[] = [`# Tools (${record.tools.length})`, ...tools, "", "# Messages"];
  let turn = -1;
  record.messages.forEach((m, index) => {
    if (m.role === "user") turn++;
    const where = turn < 0 ? "before the first turn" : `turn ${turn}`;
    lines.push(`## [${index}] ${m.role} · ${where}${m.tool_call_id ? ` · answers ${m.tool_call_id}` : ""}`);
    const hide = opts.hideReasoning;
    const text = hide && m.role === "assistant" ? m.content.replace(THINK_BLOCK, hide(index)) : m.content;
    lines.push(text === "" ? "(empty)" : text);
    for (const c of m.tool_calls) {
      lines.push(`→ tool call ${c.id}: ${c.function.name}(${c.function.arguments})`);
    }
  });
  return lines.join("\n");
}

/** The number of user turns of a record. */
export function userTurns(record: TrajectoryRecord): number {
  return record.messages.reduce((n, m) => n + (m.role === "user" ? 1 : 0), 0);
}

// ---------------------------------------------------------------------------------------------
// Reading an answer

/**
 * Texts that may hold the answer's JSON object, the most literal first: the answer without its complete
 * `<think>…</think>` blocks (reasoning is not the answer), each fenced block, then the widest `{…}` slice.
 */
function objectCandidates(text: string): string[] {
  const source = text.replace(/<think>[\s\S]*?<\/think>/g, "");
  const seen = new Set<string>([source.trim()]);
  for (const fenced of source.matchAll(/```(?:json|JSON)?\s*\n?([\s\S]*?)```/g)) seen.add(fenced[1]!.trim());
  const from = source.indexOf("{");
  const to = source.lastIndexOf("}");
  if (from >= 0 && to > from) seen.add(source.slice(from, to + 1));
  seen.delete("");
  return [...seen];
}

/** A zod issue path as `a.b[2].c`. */
function joinPath(parts: readonly PropertyKey[]): string {
  if (parts.length === 0) return "(root)";
  return parts.reduce<string>(
    (acc, p) => typeof p === "number" ? `${acc}[${p}]` : acc === "" ? String(p) : `${acc}.${String(p)}`,
    "",
  );
}

function at(root: unknown, parts: readonly PropertyKey[]): unknown {
  return parts.reduce<unknown>(
    (cur, p) =>
      cur !== null && typeof cur === "object" ? (cur as Record<PropertyKey, unknown>)[p] : undefined,
    root,
  );
}

/**
 * The JSON object in a model's answer, validated by `schema`. The first candidate that parses as an
 * object decides: its schema problems are returned with their paths and values. Without any object the
 * one problem says whether the answer was empty, cut by the token limit or not JSON.
 */
export function readAnswer<V>(
  text: string,
  schema: z.ZodType<V>,
  opts: { truncated: boolean },
): StageCheck<V> {
  for (const candidate of objectCandidates(text)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(candidate);
    } catch {
      continue;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) continue;
    const checked = schema.safeParse(parsed);
    if (checked.success) return { ok: true, value: checked.data };
    return {
      ok: false,
      errors: checked.error.issues.map((i) => {
        const found = at(parsed, i.path);
        const issue: StageIssue = { path: joinPath(i.path), message: i.message };
        if (found !== undefined) issue.value = found;
        return issue;
      }),
    };
  }
  const message = text.trim() === ""
    ? "The answer is empty, expected a JSON object"
    : opts.truncated
    ? "The answer was cut by the token limit before its JSON object ended"
    : "The answer holds no JSON object";
  return { ok: false, errors: [{ path: "(root)", message, value: preview(text, 120) }] };
}

// ---------------------------------------------------------------------------------------------
// The retry conversation

/** Most problems listed in one feedback message, and most characters of an earlier answer echoed. */
export const STAGE_FEEDBACK_LIMITS = { issues: 25, echoChars: 40_000 } as const;

/** The user message of a retry: the problems of the previous answer, then what to send. */
export function stageFeedback(errors: readonly StageIssue[], instruction: string): string {
  const listed = errors.slice(0, STAGE_FEEDBACK_LIMITS.issues);
  const rest = errors.length - listed.length;
  const n = errors.length;
  return `Your answer cannot be used: ${n} problem${n === 1 ? "" : "s"}.\n` +
    listed.map((e) => `- ${formatStageIssue(e)}\n`).join("") +
    (rest > 0 ? `- ${rest} more problems like these\n` : "") +
    `\n${instruction}`;
}

/**
 * The messages of one attempt: the stage's system prompt and the record, then, on a retry, the previous
 * answer (cut past {@linkcode STAGE_FEEDBACK_LIMITS}) and the feedback naming its problems.
 */
export function stageConversation(
  system: string,
  user: string,
  retry?: { prior: StagePrior; instruction: string },
): ChatMessage[] {
  const out: ChatMessage[] = [{ role: "system", content: system }, { role: "user", content: user }];
  if (!retry) return out;
  const { output, errors } = retry.prior;
  const max = STAGE_FEEDBACK_LIMITS.echoChars;
  const echo = output === ""
    ? "(no answer)"
    : output.length <= max
    ? output
    : `${output.slice(0, max)}\n[… the rest of the answer is not shown]`;
  out.push({ role: "assistant", content: echo }, {
    role: "user",
    content: stageFeedback(errors, retry.instruction),
  });
  return out;
}
