/**
 * The checklist judge (`cm2-reference.md` §4): prompt, verdict schema and parsing, voting, cache keys,
 * and the judging plan of one turn (which (step, item) cells still need a verdict).
 *
 * One call judges one checklist item (or, with `itemsPerCall > 1`, a batch of items) at one assistant
 * step, given the previous turns and the current turn up to that step and its tool results. The verdict
 * JSON lists four analysis fields before the boolean `answer`, so the model reasons before it decides.
 *
 * Judging plans ({@linkcode JudgeMode}):
 * - `exhaustive` (the reference): every (step, item) cell of the turn is judged, all in one round.
 * - `incremental`: steps are judged in order, one round per step. A cell (s, c) is skipped when its
 *   verdict cannot change any reward, and filled with `true`. Which cells those are depends on how the
 *   rewards read dependencies ({@linkcode SkipBasis}):
 *   - basis `completed` (default, safe for every reward level, preset and dependency timing): both of
 *     - item c was *completed* at an earlier step s' < s: judged true at s' while each of its dependencies
 *       had been completed at a step before s' (the strictest completion timing). Completion under the
 *       reference's same-step item-order timing is never later. Once an item is completed its later
 *       verdicts are read by no completion-based reward: the OR of the turn score and of the strictness gate
 *       is already true, the completion step is fixed, and the item is no longer eligible;
 *     - and the `paid` condition below, which covers eq. 2 on raw verdicts.
 *   - basis `paid` (rewards with `dependencyTiming: "pre-step-verdicts"`, the `paper` and `fixed` presets):
 *     item c *paid* at an earlier step (its first flip from false to true with every dependency judged
 *     true in the pre-step state), and every item that depends on c paid at an earlier step too. A paid item
 *     pays no more, so its own later verdicts are read by nothing; but a dependent that has not paid yet
 *     reads c's verdict in its pre-step state, so c is judged until its dependents are done.
 *   - basis `satisfied` (OR-only rewards: the `reference` preset at trajectory or turn level, and the
 *     gate): item c was judged true at any earlier step, dependencies ignored. Not safe at step level or
 *     with `dependenciesAtTurnLevel`, because a dependency completed later needs c's later verdicts.
 *   Filled cells are `true`, the value the OR already has, so `turnPassed` and every reward computed from
 *   the filled matrix equal those of the exhaustive matrix whenever the judge answers the judged cells the
 *   same way (`tests/unit/judge_test.ts` checks this on random matrices for every preset and level).
 *
 * Voting: with `votes = k`, each cell is asked k times (k cache keys) and the majority wins; a tie (even k)
 * is `false`, so an item is credited only when more than half the votes say so. Any failed vote is a judge
 * failure of the episode, never a silent `false`.
 *
 * Pure, no I/O.
 *
 * @module
 */
import { canonicalJson, isJsonObject, pyJson } from "./canonical_json.ts";
import type { ChatRequest, ChatResult, Sampling } from "./llm_types.ts";
import type { ChecklistItem } from "./records.ts";
import { extractJsonObject } from "./simulator.ts";
import type { JudgeContext } from "./transcript.ts";

/** Version of the one-item judge prompt; part of every judge cache key. */
export const JUDGE_PROMPT_VERSION = "cm2-judge-v1";
/** Version of the batched judge prompt (`itemsPerCall > 1`); part of its cache keys. */
export const JUDGE_BATCH_PROMPT_VERSION = "cm2-judge-batch-v1";

/** How the cells of a turn are scheduled; see the module doc. */
export type JudgeMode = "exhaustive" | "incremental";
/** What makes a cell skippable in `incremental` mode; see the module doc. */
export type SkipBasis = "completed" | "paid" | "satisfied";

/** The fields of a checklist item the judge reads. */
export type JudgeItem = Pick<
  ChecklistItem,
  "id" | "question" | "focus_on" | "pass_condition" | "failure_examples" | "evidence"
>;

/** The analysis fields of a verdict, in the order the model must write them. */
export const VERDICT_ANALYSIS_FIELDS = [
  "high_level_understanding_of_the_question",
  "analysis_of_if_focus_on",
  "analysis_of_pass_condition",
  "analysis_of_failure_examples",
] as const;

const verdictProperties: Record<string, unknown> = {
  ...Object.fromEntries(VERDICT_ANALYSIS_FIELDS.map((f) => [f, { type: "string" }])),
  answer: { type: "boolean" },
};

/** JSON schema of a one-item verdict (response format name `evaluation_verdict`). */
export const VERDICT_SCHEMA: Record<string, unknown> = {
  type: "object",
  properties: verdictProperties,
  required: [...VERDICT_ANALYSIS_FIELDS, "answer"],
  additionalProperties: false,
};

/**
 * JSON schema of a batched verdict (response format name `evaluation_verdicts`): one entry per item, in order.
 * A request uses {@linkcode batchVerdictSchema}, which also fixes the number of entries.
 */
export const BATCH_VERDICT_SCHEMA: Record<string, unknown> = {
  type: "object",
  properties: {
    verdicts: {
      type: "array",
      items: {
        type: "object",
        properties: { item_id: { type: "string" }, ...verdictProperties },
        required: ["item_id", ...VERDICT_ANALYSIS_FIELDS, "answer"],
        additionalProperties: false,
      },
    },
  },
  required: ["verdicts"],
  additionalProperties: false,
};

/**
 * The batched verdict schema for exactly `count` items (`minItems` = `maxItems` = `count`), so a constrained
 * decoder (a small local judge under a grammar) cannot stop after fewer verdicts than asked.
 */
export function batchVerdictSchema(count: number): Record<string, unknown> {
  const verdicts = (BATCH_VERDICT_SCHEMA.properties as Record<string, Record<string, unknown>>).verdicts!;
  return {
    ...BATCH_VERDICT_SCHEMA,
    properties: { verdicts: { ...verdicts, minItems: count, maxItems: count } },
  };
}

function criterion(item: JudgeItem): string {
  const snippets = item.evidence.map((e) => e.snippet);
  return `**Question:** ${item.question}\n` +
    `**Focus on:** ${item.focus_on}\n` +
    `**Pass condition:** ${item.pass_condition}\n` +
    `**Failure examples:** ${pyJson(item.failure_examples, { indent: 2 })}\n` +
    `**Reference snippet:** ${pyJson(snippets, { indent: 2 })}\n`;
}

const TOOL_RULES = "# Rules about tool calls\n" +
  "- If the tool_call field of a step is None but its content.thinking field contains tool calls, those calls " +
  "were written in a wrong format: none of them count as made.\n" +
  "- If a tool response reports an error, the tool calls of the latest assistant step (that step only) " +
  "count as invalid.\n\n";

const STEPS = "1. high_level_understanding_of_the_question:\n" +
  "   - Say in a few words what is being checked and what meeting it would mean here.\n" +
  "2. analysis_of_if_focus_on:\n" +
  "   - Check whether the part named in 'Focus on' appears in the Messages to Evaluate.\n" +
  "3. analysis_of_pass_condition:\n" +
  "   - Decide whether the 'Pass condition' is met in full.\n" +
  "4. analysis_of_failure_examples:\n" +
  "   - Go through every failure example and mark it 'triggered' or 'not triggered', with a short reason.\n" +
  "5. answer:\n" +
  "   - true only when the focus part is present, the pass condition is met in full and no failure example is " +
  "triggered; false in every other case.\n\n";

function messagesSections(ctx: JudgeContext): string {
  return "# Previous Messages (context only, not evaluated)\n" + ctx.previous +
    "# Current Messages to Evaluate\n" + ctx.current + "\n";
}

/**
 * The one-item judge prompt (a single user message), in cm2's own words, with the reference's sections:
 * role, objective, criteria, previous messages, current messages, tool-call rules, evaluation steps and
 * output format.
 */
export function judgePrompt(item: JudgeItem, ctx: JudgeContext): string {
  return "# Role\n" +
    "You are a careful checklist evaluator. Your only job is to decide whether the messages exchanged between " +
    "a user, an assistant and its tools meet the criterion below.\n\n" +
    "# Objective\n" +
    "Give a strict JSON verdict, with no other text, following the steps below.\n\n" +
    "# Criteria\n" + criterion(item) + "\n" +
    messagesSections(ctx) + "\n" +
    TOOL_RULES +
    "# Evaluation Steps (each step fills one field of the JSON answer)\n" + STEPS +
    "# Output Format\n" +
    "Answer with one JSON object that has exactly these keys, in this order:\n" +
    "{\n" + VERDICT_ANALYSIS_FIELDS.map((f) => `  "${f}": str,\n`).join("") + '  "answer": bool\n}';
}

/** The batched judge prompt: several criteria of the same step, one verdict each, in the given order. */
export function judgeBatchPrompt(items: readonly JudgeItem[], ctx: JudgeContext): string {
  const criteria = items.map((item) => `## Criterion ${item.id}\n${criterion(item)}`).join("\n");
  return "# Role\n" +
    "You are a careful checklist evaluator. Your only job is to decide, for each criterion below, whether the " +
    "messages exchanged between a user, an assistant and its tools meet it. Judge each criterion on its own.\n\n" +
    "# Objective\n" +
    "Give a strict JSON verdict per criterion, with no other text, following the steps below.\n\n" +
    "# Criteria\n" + criteria + "\n" +
    messagesSections(ctx) + "\n" +
    TOOL_RULES +
    "# Evaluation Steps (for every criterion; each step fills one field of its verdict)\n" + STEPS +
    "# Output Format\n" +
    `Answer with one JSON object {"verdicts": [...]} holding one verdict per criterion, in the order ` +
    `${items.map((i) => i.id).join(", ")}, each with exactly these keys, in this order:\n` +
    '{\n  "item_id": str,\n' + VERDICT_ANALYSIS_FIELDS.map((f) => `  "${f}": str,\n`).join("") +
    '  "answer": bool\n}';
}

/** The judge request for one or more items at one step. */
export function judgeRequest(
  items: readonly JudgeItem[],
  ctx: JudgeContext,
  sampling?: Sampling,
): ChatRequest {
  if (items.length === 0) throw new Error("A judge request needs at least 1 item");
  const batched = items.length > 1;
  const req: ChatRequest = {
    messages: [{
      role: "user",
      content: batched ? judgeBatchPrompt(items, ctx) : judgePrompt(items[0]!, ctx),
    }],
    jsonSchema: batched
      ? { name: "evaluation_verdicts", schema: batchVerdictSchema(items.length) }
      : { name: "evaluation_verdict", schema: VERDICT_SCHEMA },
  };
  if (sampling && Object.keys(sampling).length > 0) req.sampling = { ...sampling };
  return req;
}

/** The prompt version a request for `count` items uses. */
export function promptVersionFor(count: number): string {
  return count > 1 ? JUDGE_BATCH_PROMPT_VERSION : JUDGE_PROMPT_VERSION;
}

/**
 * Content-addressed key of one judge call: `hash` over what is actually asked — the judge model, the rendered
 * request (messages, response schema, per-request sampling), the role's default sampling that the client adds,
 * and the vote number. Identical calls in any episode of any iteration map to the same key; changing one word
 * of the prompt, the schema or the sampling is a new key (no prompt-version label to forget to bump).
 */
export function judgeCacheKey(
  hash: (text: string) => string,
  parts: { model: string; request: ChatRequest; defaults?: Sampling; vote: number },
): string {
  return hash(canonicalJson({
    model: parts.model,
    request: parts.request,
    defaults: parts.defaults ?? {},
    vote: parts.vote,
  }));
}

/** Outcome of {@linkcode parseVerdicts}. */
export type VerdictParse = { ok: true; answers: boolean[] } | { ok: false; error: string };

function readAnswer(v: unknown): boolean | undefined {
  if (v === true || v === 1) return true;
  if (v === false || v === 0) return false;
  return undefined;
}

/** The judge's entry for each of `itemIds` (see {@linkcode parseVerdicts}), or why there is none. */
function verdictEntries(
  result: Pick<ChatResult, "content" | "finishReason">,
  itemIds: readonly string[],
): { ok: true; entries: Record<string, unknown>[]; single: boolean } | { ok: false; error: string } {
  const obj = extractJsonObject(result.content);
  const cut = result.finishReason === "length" ? " (cut by the token limit)" : "";
  if (obj === undefined) return { ok: false, error: `Judge answer is not a JSON object${cut}` };
  if (itemIds.length === 1 && !Array.isArray(obj.verdicts)) return { ok: true, entries: [obj], single: true };
  const list = obj.verdicts;
  if (!Array.isArray(list) || !list.every(isJsonObject)) {
    return { ok: false, error: `Judge answer has no verdicts array${cut}` };
  }
  if (list.length !== itemIds.length) {
    return { ok: false, error: `Judge answer has ${list.length} verdicts, expected ${itemIds.length}` };
  }
  const byId = list.every((v) => typeof v.item_id === "string")
    ? new Map(list.map((v) => [v.item_id as string, v]))
    : null;
  const entries: Record<string, unknown>[] = [];
  for (const [k, id] of itemIds.entries()) {
    const v = byId ? byId.get(id) : list[k];
    if (v === undefined) return { ok: false, error: `Judge answer has no verdict for item ${id}` };
    entries.push(v);
  }
  return { ok: true, entries, single: false };
}

/**
 * Read the judge's answer(s) for `itemIds`. One item: an object with a boolean `answer` (`1`/`0` accepted,
 * as Python's `in [True, False]` does). Several: `{"verdicts": [...]}` with one entry per item, matched by
 * `item_id` when every entry has one, else by position. Anything else is a failure.
 */
export function parseVerdicts(
  result: Pick<ChatResult, "content" | "finishReason">,
  itemIds: readonly string[],
): VerdictParse {
  const got = verdictEntries(result, itemIds);
  if (!got.ok) return got;
  const cut = result.finishReason === "length" ? " (cut by the token limit)" : "";
  const answers: boolean[] = [];
  for (const [k, v] of got.entries.entries()) {
    const a = readAnswer(v.answer);
    if (a === undefined) {
      return got.single
        ? { ok: false, error: `Judge answer has no boolean answer${cut}` }
        : { ok: false, error: `Judge verdict for item ${itemIds[k]} has no boolean answer` };
    }
    answers.push(a);
  }
  return { ok: true, answers };
}

/** The judge's written reasoning for one item: its analysis fields (clipped) and the answer. */
export type VerdictNote = Partial<Record<(typeof VERDICT_ANALYSIS_FIELDS)[number], string>> & {
  answer: boolean;
};

/** Longest analysis field kept in a {@linkcode VerdictNote}, in characters. */
export const NOTE_FIELD_CHARS = 1200;

/**
 * The reasoning behind a parsed answer, one note per item in `itemIds` order (matched as
 * {@linkcode parseVerdicts} matches), or null when the answer does not parse.
 */
export function verdictNotes(
  result: Pick<ChatResult, "content" | "finishReason">,
  itemIds: readonly string[],
): VerdictNote[] | null {
  const parsed = parseVerdicts(result, itemIds);
  const got = verdictEntries(result, itemIds);
  if (!parsed.ok || !got.ok) return null;
  return got.entries.map((v, k) => {
    const note: VerdictNote = { answer: parsed.answers[k]! };
    for (const f of VERDICT_ANALYSIS_FIELDS) {
      const text = v[f];
      if (typeof text === "string") {
        note[f] = text.length > NOTE_FIELD_CHARS ? `${text.slice(0, NOTE_FIELD_CHARS)}…` : text;
      }
    }
    return note;
  });
}

/** Majority of votes: true only when strictly more than half are true (a tie is false). */
export function majority(votes: readonly boolean[]): boolean {
  if (votes.length === 0) throw new Error("Majority of 0 votes is undefined");
  return votes.filter(Boolean).length * 2 > votes.length;
}

/** One cell of a turn's verdict matrix. */
export interface Cell {
  step: number;
  item: number;
}

/** Verdict matrix of one turn and variant: `sat[step][item]`, `null` while not judged. */
export type SatMatrix = (boolean | null)[][];

/** The dependency-relevant fields of an item. */
export interface PlanItem {
  readonly id: string;
  readonly dependence: readonly string[];
}

/**
 * Fill the cells that `incremental` mode skips (see the module doc) with `true`, walking steps in order
 * and stopping at the first step that still has unjudged cells. Returns the new matrix and how many cells
 * were filled. `exhaustive` mode returns the matrix unchanged.
 */
export function fillSkipped(
  sat: SatMatrix,
  items: readonly PlanItem[],
  mode: JudgeMode,
  basis: SkipBasis = "completed",
): { sat: SatMatrix; filled: number } {
  const out = sat.map((row) => [...row]);
  if (mode === "exhaustive") return { sat: out, filled: 0 };
  const index = new Map(items.map((it, c) => [it.id, c]));
  const deps = items.map((it) => it.dependence.map((d) => index.get(d) ?? -1));
  const dependents = items.map((_, c) => items.flatMap((_, x) => deps[x]!.includes(c) ? [x] : []));
  const completed = items.map(() => -1);
  const paid = items.map(() => -1);
  const skippable = (c: number): boolean => {
    if (basis === "satisfied") return completed[c]! >= 0;
    const paidOut = paid[c]! >= 0 && dependents[c]!.every((x) => paid[x]! >= 0);
    return paidOut && (basis === "paid" || completed[c]! >= 0);
  };
  let filled = 0;
  for (const [s, row] of out.entries()) {
    for (let c = 0; c < items.length; c++) {
      if (row[c] === null && skippable(c)) {
        row[c] = true;
        filled++;
      }
    }
    if (row.some((v) => v === null)) break;
    const pre = s > 0 ? out[s - 1]! : undefined;
    for (let c = 0; c < items.length; c++) {
      if (row[c] !== true) continue;
      const strict = basis === "satisfied" ||
        deps[c]!.every((d) => d >= 0 && completed[d]! >= 0 && completed[d]! < s);
      if (completed[c]! < 0 && strict) completed[c] = s;
      const flips = pre?.[c] !== true && deps[c]!.every((d) => d >= 0 && pre?.[d] === true);
      if (paid[c]! < 0 && flips) paid[c] = s;
    }
  }
  return { sat: out, filled };
}

/**
 * The cells to judge in the next round: every unjudged cell (`exhaustive`), or the unjudged cells of the
 * first step that has any (`incremental`; call {@linkcode fillSkipped} first). Empty when the turn is done.
 */
export function roundCells(sat: SatMatrix, mode: JudgeMode): Cell[] {
  const cells: Cell[] = [];
  for (const [s, row] of sat.entries()) {
    row.forEach((v, c) => {
      if (v === null) cells.push({ step: s, item: c });
    });
    if (mode === "incremental" && cells.length > 0) break;
  }
  return cells;
}

/** The judge's reasoning behind the cells of one judge call of an episode (what the `judgeCall` activity keeps). */
export interface JudgeNotes {
  turn: number;
  variant: number;
  step: number;
  vote: number;
  itemIds: readonly string[];
  notes: VerdictNote[];
}

/** Where an episode's judge notes live: one name per call, under its group (`<group>/notes/<ep-g>/…`). */
export function judgeNotesPrefix(group: string, episode: string): string {
  return `${group}/notes/${episode.split("/").at(-1)}/`;
}

/** The store name of one judge call's notes. */
export function judgeNotesName(
  group: string,
  episode: string,
  call: { turn: number; variant: number; step: number; items: readonly number[]; vote: number },
): string {
  const cell = `t${call.turn}-v${call.variant}-s${call.step}-i${call.items.join("_")}-k${call.vote}`;
  return `${judgeNotesPrefix(group, episode)}${cell}`;
}
