/**
 * CoT compression of CM2's data pipeline (`cm2 data compress-cot`), pure: a strong model rewrites the
 * reasoning of a record's assistant messages (the inside of `<think>…</think>`) to at most `target` ×
 * its original length in estimated tokens (characters / 4, as `core/episode.ts` estimates), keeping the
 * plan and the decisions. The answer is `{ messages: [{ index, thinking }] }`, one entry per assistant
 * message with reasoning.
 *
 * Nothing but reasoning may change, and that is checked in code, not trusted: {@linkcode checkCompression}
 * applies the rewrite to the record ({@linkcode applyRewrite}) and compares the result with the original
 * ({@linkcode compareRewrite}): every tool call (id, type, name, argument string) and every user-visible
 * text (the content outside the think block, and every non-assistant message) must be byte-identical; a
 * missing, extra or repeated index, an empty reasoning, think tags inside it, or a reasoning over its limit
 * is a problem naming the message index and what changed. A record whose answers never pass is kept
 * unchanged ("not-compressed", with its reasons).
 *
 * @example
 * ```ts
 * const check = checkCompression(reply, record, 0.5);
 * const out = check.ok ? check.value.record : record;
 * ```
 *
 * @module
 */
import { z } from "zod";
import type { Message, TrajectoryRecord } from "./records.ts";
import {
  readAnswer,
  type RecordStage,
  renderDialogue,
  type StageCheck,
  stageConversation,
  type StageIssue,
  type StageParams,
} from "./record_stage.ts";

/** Version of the compression prompt and checks; with the target, part of every stored result's key. */
export const COMPRESS_PROMPT_VERSION = "cm2-compress-v1";

/** The default share of its original length a reasoning may keep. */
export const DEFAULT_COMPRESS_TARGET = 0.5;

/** The `criterion` of the reasons of a record left uncompressed. */
export const COMPRESS_CRITERION = "cot_compress";

const OPEN = "<think>";
const CLOSE = "</think>";

/** The model's answer: the new reasoning of each assistant message that has reasoning. */
export const CompressAnswerSchema = z.object({
  messages: z.array(z.object({ index: z.number().int(), thinking: z.string() })),
});

export type CompressAnswer = z.infer<typeof CompressAnswerSchema>;

/** An assistant content cut around its first `<think>…</think>` block. */
export interface ReasoningSplit {
  /** Text before `<think>` (user-visible). */
  before: string;
  /** The reasoning, between the tags, verbatim. */
  thinking: string;
  /** Text after `</think>` (user-visible). */
  after: string;
}

/** The first complete think block of a content, or undefined when it has none. */
export function splitReasoning(content: string): ReasoningSplit | undefined {
  const open = content.indexOf(OPEN);
  if (open < 0) return undefined;
  const close = content.indexOf(CLOSE, open + OPEN.length);
  if (close < 0) return undefined;
  return {
    before: content.slice(0, open),
    thinking: content.slice(open + OPEN.length, close),
    after: content.slice(close + CLOSE.length),
  };
}

/** What the user sees of a content: everything outside its think block (all of it when there is none). */
export function visibleText(content: string): string {
  const s = splitReasoning(content);
  return s ? s.before + s.after : content;
}

/** Estimated tokens of a reasoning text: its characters (surrounding whitespace aside) / 4, rounded up. */
export function reasoningTokens(text: string): number {
  return Math.ceil(text.trim().length / 4);
}

/** The most tokens a reasoning of `tokens` may keep at `target` (at least 1). */
export function reasoningLimit(tokens: number, target: number): number {
  return Math.max(1, Math.floor(tokens * target));
}

/** One assistant message whose reasoning is to be rewritten. */
export interface ReasoningSlot {
  /** Index in `record.messages`. */
  index: number;
  thinking: string;
  tokens: number;
  /** Most tokens the new reasoning may have. */
  limit: number;
}

function reasoningOf(m: Message): string | undefined {
  if (m.role !== "assistant") return undefined;
  const thinking = splitReasoning(m.content)?.thinking;
  return thinking !== undefined && thinking.trim() !== "" ? thinking : undefined;
}

/** The assistant messages with (non-blank) reasoning, with their limits at `target`. */
export function reasoningSlots(record: TrajectoryRecord, target: number): ReasoningSlot[] {
  const slots: ReasoningSlot[] = [];
  record.messages.forEach((m, index) => {
    const thinking = reasoningOf(m);
    if (thinking === undefined) return;
    const tokens = reasoningTokens(thinking);
    slots.push({ index, thinking, tokens, limit: reasoningLimit(tokens, target) });
  });
  return slots;
}

/** Estimated reasoning tokens of a whole record (every assistant think block). */
export function recordReasoningTokens(record: TrajectoryRecord): number {
  return record.messages.reduce((n, m) => n + reasoningTokens(reasoningOf(m) ?? ""), 0);
}

/**
 * The record with each listed reasoning replaced. The new text keeps the original block's leading and
 * trailing whitespace (`<think>\n…\n</think>` stays so). Entries naming a message without a think block
 * are left out (the check reports them).
 */
export function applyRewrite(record: TrajectoryRecord, answer: CompressAnswer): TrajectoryRecord {
  const messages = record.messages.map((m) => ({ ...m }));
  for (const { index, thinking } of answer.messages) {
    const m = messages[index];
    const split = m?.role === "assistant" ? splitReasoning(m.content) : undefined;
    if (!m || !split) continue;
    const lead = /^\s*/.exec(split.thinking)![0];
    const trail = split.thinking.trim() === "" ? "" : /\s*$/.exec(split.thinking)![0];
    m.content = `${split.before}${OPEN}${lead}${thinking.trim()}${trail}${CLOSE}${split.after}`;
  }
  return { ...record, messages };
}

const show = (s: string, max = 80) => JSON.stringify(s.length > max ? `${s.slice(0, max)}…` : s);

/** Problems of the answer's index list: indices that are not to be rewritten, repeats, and missing ones. */
export function checkIndices(record: TrajectoryRecord, answer: CompressAnswer, target: number): StageIssue[] {
  const wanted = new Set(reasoningSlots(record, target).map((s) => s.index));
  const seen = new Set<number>();
  const issues: StageIssue[] = [];
  answer.messages.forEach(({ index }, k) => {
    const path = `answer.messages[${k}].index`;
    if (seen.has(index)) {
      issues.push({ path, message: `Message ${index} is listed twice`, value: index });
    } else if (!wanted.has(index)) {
      const m = record.messages[index];
      const what = !m
        ? `the record has no message ${index}`
        : m.role !== "assistant"
        ? `message ${index} is a ${m.role} message`
        : `message ${index} has no reasoning to rewrite`;
      issues.push({ path, message: `Extra index: ${what}`, value: index });
    }
    seen.add(index);
  });
  for (const index of wanted) {
    if (!seen.has(index)) {
      issues.push({
        path: "answer.messages",
        message: `Missing index ${index}: the reasoning of assistant message ${index} was not rewritten`,
      });
    }
  }
  return issues;
}

function compareCalls(i: number, was: Message, now: Message, issues: StageIssue[]): void {
  const base = `record.messages[${i}].tool_calls`;
  if (was.tool_calls.length !== now.tool_calls.length) {
    issues.push({
      path: base,
      message: `Message ${i} has ${now.tool_calls.length} tool calls, the original ${was.tool_calls.length}`,
    });
    return;
  }
  was.tool_calls.forEach((c, k) => {
    const d = now.tool_calls[k]!;
    const fields: [string, string, string][] = [
      ["id", c.id, d.id],
      ["type", c.type, d.type],
      ["function.name", c.function.name, d.function.name],
      ["function.arguments", c.function.arguments, d.function.arguments],
    ];
    for (const [field, before, after] of fields) {
      if (before === after) continue;
      issues.push({
        path: `${base}[${k}].${field}`,
        message: `Tool call ${k} of message ${i} changed its ${field} (was ${show(before)})`,
        value: after,
      });
    }
  });
}

function compareReasoning(
  i: number,
  original: string,
  content: string,
  target: number,
  issues: StageIssue[],
): void {
  const path = `record.messages[${i}].thinking`;
  const thinking = splitReasoning(content)?.thinking;
  if (thinking === undefined) {
    issues.push({ path, message: `Message ${i} lost its <think>…</think> block` });
    return;
  }
  if (thinking.trim() === "") {
    issues.push({ path, message: `The new reasoning of message ${i} is empty` });
    return;
  }
  if (thinking.includes(OPEN)) {
    issues.push({
      path,
      message: `The new reasoning of message ${i} contains a ${OPEN} tag`,
      value: thinking,
    });
  }
  const was = reasoningTokens(original);
  const now = reasoningTokens(thinking);
  const limit = reasoningLimit(was, target);
  if (now > limit) {
    issues.push({
      path,
      message:
        `The new reasoning of message ${i} has ${now} tokens (${thinking.trim().length} characters), over its limit of ${limit} (${target} × ${was}; at most ${
          limit * 4
        } characters)`,
    });
  }
}

/**
 * Everything that differs between a record and its rewrite other than a reasoning within its limit:
 * message count, roles, tool calls (id, type, name, argument string), tool-call ids, every user-visible
 * text and non-assistant content, the tools; and, for each assistant message with reasoning, a new
 * reasoning that is present, non-empty, tag-free and at most its limit. Each problem names the message.
 */
export function compareRewrite(
  original: TrajectoryRecord,
  rewritten: TrajectoryRecord,
  target: number,
): StageIssue[] {
  const issues: StageIssue[] = [];
  if (JSON.stringify(original.tools) !== JSON.stringify(rewritten.tools)) {
    issues.push({ path: "record.tools", message: "The tools changed" });
  }
  if (original.messages.length !== rewritten.messages.length) {
    issues.push({
      path: "record.messages",
      message:
        `The record has ${rewritten.messages.length} messages, the original ${original.messages.length}`,
    });
    return issues;
  }
  original.messages.forEach((was, i) => {
    const now = rewritten.messages[i]!;
    const at = `record.messages[${i}]`;
    if (was.role !== now.role) {
      issues.push({
        path: `${at}.role`,
        message: `Message ${i} changed its role from ${was.role}`,
        value: now.role,
      });
      return;
    }
    if (was.tool_call_id !== now.tool_call_id || was.name !== now.name) {
      issues.push({ path: at, message: `Message ${i} changed its tool_call_id or name` });
    }
    compareCalls(i, was, now, issues);
    if (was.role !== "assistant") {
      if (was.content !== now.content) {
        issues.push({
          path: `${at}.content`,
          message: `The ${was.role} message ${i} changed`,
          value: now.content,
        });
      }
      return;
    }
    const visibleBefore = visibleText(was.content);
    const visibleNow = visibleText(now.content);
    if (visibleBefore !== visibleNow) {
      issues.push({
        path: `${at}.content`,
        message: `The user-visible text of message ${i} (outside <think>…</think>) changed (was ${
          show(visibleBefore)
        })`,
        value: visibleNow,
      });
    }
    const reasoning = reasoningOf(was);
    if (reasoning !== undefined) compareReasoning(i, reasoning, now.content, target, issues);
    else if (was.content !== now.content) {
      issues.push({ path: `${at}.content`, message: `Message ${i} has no reasoning to rewrite but changed` });
    }
  });
  return issues;
}

/** The checked answer: the rewrite and the record it makes. */
export interface CompressResult {
  answer: CompressAnswer;
  record: TrajectoryRecord;
}

/**
 * Reads an answer, checks its indices, applies it and compares the result with the original. Problems
 * about a message the answer left out are reported once, as the missing index.
 */
export function checkCompression(
  text: string,
  record: TrajectoryRecord,
  target: number,
  opts: { truncated?: boolean } = {},
): StageCheck<CompressResult> {
  const read = readAnswer(text, CompressAnswerSchema, { truncated: opts.truncated ?? false });
  if (!read.ok) return read;
  const answer = read.value;
  const rewritten = applyRewrite(record, answer);
  const given = new Set(answer.messages.map((m) => m.index));
  const missing = reasoningSlots(record, target).filter((s) => !given.has(s.index)).map((s) => s.index);
  const issues = [
    ...checkIndices(record, answer, target),
    ...compareRewrite(record, rewritten, target).filter((issue) =>
      !missing.some((i) => issue.path.startsWith(`record.messages[${i}]`))
    ),
  ];
  return issues.length > 0
    ? { ok: false, errors: issues }
    : { ok: true, value: { answer, record: rewritten } };
}

/** The compression system prompt, in our own words. */
export function compressSystemPrompt(): string {
  return `You shorten the reasoning of an AI assistant in a recorded dialogue where it helps a user by calling tools. The shortened dialogue will teach other assistants to think briefly and still act the same way.

You receive the tools, the whole dialogue, and a list of assistant messages whose reasoning (the text inside <think>...</think>) is to be rewritten. Rewrite each one so that it:
- keeps the plan and every decision: what the assistant concludes from the user's words and the tool results, which tool it picks and why, the argument values it settles on, and what it decides to tell the user;
- keeps the facts those decisions rest on (ids, names, dates, amounts, the user's constraints);
- drops repetition, restated instructions, hedging and detours that change nothing;
- stays the assistant's own first-person thinking, in the language of the original;
- adds nothing the original does not support and never mentions that it was rewritten;
- is no longer than the number of characters given for that message.

Only the reasoning changes. The text after </think>, the tool calls and all other messages stay exactly as they are and are not part of your answer. Never write <think> or </think> inside the new reasoning.

Answer with one JSON object and nothing else, with one entry for each listed message, by its index:
{"messages": [{"index": 2, "thinking": "..."}]}`;
}

const RETRY_INSTRUCTION =
  'Fix every problem and answer again with the whole JSON object {"messages": [...]}, one entry for each ' +
  "listed message and no other, nothing else.";

/** The user message of a compression call: the dialogue (reasoning shown once, below), then the list. */
export function compressInput(record: TrajectoryRecord, target: number): string {
  const slots = reasoningSlots(record, target);
  const dialogue = renderDialogue(record, {
    hideReasoning: (i) => `${OPEN}(the reasoning of message [${i}] is listed below)${CLOSE}`,
  });
  const listed = slots.map((s) =>
    `## message [${s.index}]: at most ${
      s.limit * 4
    } characters (the original has ${s.thinking.trim().length})\n${s.thinking.trim()}`
  );
  return `${dialogue}\n\n# Reasoning to rewrite (${slots.length} message${
    slots.length === 1 ? "" : "s"
  }, each to at most ${target} of its length)\n\n${listed.join("\n\n")}\n\nWrite the JSON object now, ` +
    `with exactly the indices ${slots.map((s) => s.index).join(", ")}.`;
}

function targetOf(params: StageParams): number {
  return params.target ?? DEFAULT_COMPRESS_TARGET;
}

/** CoT compression as a record stage (see the module doc). */
export const cotCompressStage: RecordStage<CompressResult> = {
  kind: "compress",
  step: "compress-cot",
  withoutResult: "keep",
  statuses: ["compressed", "no-reasoning", "not-compressed"],
  schemaName: "compressed_reasoning",
  responseSchema: CompressAnswerSchema,
  promptVersion: (params) => `${COMPRESS_PROMPT_VERSION}-t${targetOf(params)}`,
  checkParams(params) {
    const t = targetOf(params);
    return Number.isFinite(t) && t > 0 && t <= 1 ? undefined : `The target must be in (0, 1], got ${t}`;
  },
  settle(record, params) {
    return reasoningSlots(record, targetOf(params)).length === 0
      ? { status: "no-reasoning", output: "keep", reasons: [] }
      : undefined;
  },
  messages(record, params, prior) {
    return stageConversation(
      compressSystemPrompt(),
      compressInput(record, targetOf(params)),
      prior && { prior, instruction: RETRY_INSTRUCTION },
    );
  },
  check: (text, record, params, opts) => checkCompression(text, record, targetOf(params), opts),
  accept(value, record, params) {
    const before = recordReasoningTokens(record);
    const after = recordReasoningTokens(value.record);
    return {
      status: "compressed",
      output: "rewrite",
      record: {
        ...value.record,
        meta: {
          ...record.meta,
          cotCompression: { promptVersion: COMPRESS_PROMPT_VERSION, target: targetOf(params), before, after },
        },
      },
      reasons: [],
      details: { messages: value.answer.messages.length, before, after },
    };
  },
  exhausted(_record, errors, attempts) {
    return {
      status: "not-compressed",
      output: "keep",
      reasons: errors.map((e) => ({
        criterion: COMPRESS_CRITERION,
        path: e.path,
        message: `Not compressed after ${attempts} attempt${attempts === 1 ? "" : "s"}: ${e.message}`,
      })),
    };
  },
  measure: recordReasoningTokens,
};
