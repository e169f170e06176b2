/**
 * The CM2 data model: trajectory records `{ uuid, tools, messages, checklists }` as in
 * `cm2-reference.md` §1, with zod schemas for the shapes and {@linkcode validateRecord} for every
 * invariant that the shapes alone cannot express. Pure, no I/O.
 *
 * @module
 */
import { z } from "zod";
import { CheckSchema, validateCheck } from "./checks.ts";

/** One tool call on an assistant message; `arguments` is a JSON-encoded object. */
export const ToolCallSchema = z.object({
  id: z.string(),
  type: z.literal("function"),
  function: z.object({ name: z.string().min(1), arguments: z.string() }),
});

/** One message of a reference trajectory. `tool_calls` is `[]` when there are none. */
export const MessageSchema = z.object({
  role: z.enum(["system", "user", "assistant", "tool"]),
  content: z.string(),
  tool_calls: z.array(ToolCallSchema).default([]),
  tool_call_id: z.string().optional(),
  name: z.string().optional(),
});

/** An OpenAI-format function tool. */
export const ToolSchemaSchema = z.object({
  type: z.literal("function"),
  function: z.object({
    name: z.string().min(1),
    description: z.string().default(""),
    parameters: z.record(z.string(), z.unknown()).default({ type: "object", properties: {} }),
    strict: z.boolean().optional(),
  }),
});

/** Where a checklist item's evidence comes from. */
export const EVIDENCE_FROM = [
  "user.content",
  "assistant.content.thinking",
  "assistant.content.user_visible_reply",
  "assistant.tool_calls",
  "tool.content",
] as const;

/** What a checklist item judges (never the user's text). */
export const FOCUS_ON = [
  "assistant.tool_calls",
  "assistant.content.thinking",
  "assistant.content.user_visible_reply",
  "tool.content",
] as const;

/** One evidence pointer of a checklist item. Turn/step are labeler hints; only `snippet` reaches the judge. */
export const EvidenceSchema = z.object({
  turn: z.number().int().min(0),
  step: z.number().int().min(0),
  from: z.enum(EVIDENCE_FROM),
  snippet: z.string(),
});

/** The fields of a checklist item as the labeler writes them (per-turn maps hold dependence and weight). */
export const ItemCoreSchema = z.object({
  id: z.string().min(1),
  evidence: z.array(EvidenceSchema),
  focus_on: z.enum(FOCUS_ON),
  question: z.string().min(1),
  pass_condition: z.string().min(1),
  failure_examples: z.array(z.string()),
  required_for_next_turn: z.boolean(),
  /** A program check that answers the item without the judge (`core/checks.ts`); beyond CM2. */
  check: CheckSchema.optional(),
});

/** A stored checklist item: the labeled fields plus its own dependence list and weight. */
export const ChecklistItemSchema = ItemCoreSchema.extend({
  dependence: z.array(z.string()),
  weight: z.number().min(0).max(1),
  extra_info: z.record(z.string(), z.unknown()).optional(),
});

/** One checklist variant: one item array per user turn. */
export const ChecklistVariantSchema = z.array(z.array(ChecklistItemSchema));

/** A trajectory record; `checklists` is empty for a record that is not labeled yet. */
export const TrajectoryRecordSchema = z.object({
  uuid: z.string().min(1),
  tools: z.array(ToolSchemaSchema),
  messages: z.array(MessageSchema).min(1),
  checklists: z.array(ChecklistVariantSchema).default([]),
  /** Provenance and source-specific facts (source, original ids, a benchmark's reward); never judged. */
  meta: z.record(z.string(), z.unknown()).optional(),
});

/** The labeler's per-turn output block (maps for dependence and weight), as in §1.3. */
export const TurnBlockSchema = z.object({
  turn: z.number().int().min(0),
  checklist: z.array(ItemCoreSchema),
  dependence: z.record(z.string(), z.array(z.string())),
  weight: z.record(z.string(), z.number()),
});

export type ToolCall = z.infer<typeof ToolCallSchema>;
export type Message = z.infer<typeof MessageSchema>;
export type ToolSchema = z.infer<typeof ToolSchemaSchema>;
export type Evidence = z.infer<typeof EvidenceSchema>;
export type ChecklistItem = z.infer<typeof ChecklistItemSchema>;
export type ChecklistVariant = z.infer<typeof ChecklistVariantSchema>;
export type TrajectoryRecord = z.infer<typeof TrajectoryRecordSchema>;
export type TurnBlock = z.infer<typeof TurnBlockSchema>;

/** Tolerance on a turn's weight sum, as in the reference labeler. */
export const WEIGHT_TOLERANCE = 1e-6;

/** One precise problem with a record: the field path, what is wrong, and the offending value. */
export interface RecordIssue {
  path: string;
  message: string;
  value?: unknown;
}

/** The result of {@linkcode validateRecord}. */
export type RecordValidation =
  | { ok: true; record: TrajectoryRecord }
  | { ok: false; issues: RecordIssue[] };

/** Shortens a value for an error message so one bad record cannot flood a report. */
export function preview(value: unknown, max = 80): unknown {
  if (typeof value === "string") return value.length > max ? `${value.slice(0, max)}…` : value;
  if (value === undefined || value === null || typeof value !== "object") return value;
  const text = JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max)}…` : value;
}

function pathOf(parts: readonly PropertyKey[]): string {
  let out = "";
  for (const p of parts) {
    out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  }
  return out;
}

/** The value at a zod issue path inside a raw input (undefined where the path leads nowhere). */
export function valueAt(root: unknown, parts: readonly PropertyKey[]): unknown {
  let cur: unknown = root;
  for (const p of parts) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}

/** Number of user turns of a message list (= the number of `user` messages). */
export function countUserTurns(messages: readonly Pick<Message, "role">[]): number {
  return messages.filter((m) => m.role === "user").length;
}

/**
 * Checks the message-order invariants of §1.1 and returns every violation found:
 * system only at index 0; first non-system message is `user`; `user` is followed by `assistant`;
 * an assistant message with k tool calls is followed by exactly k `tool` messages (matching
 * `tool_call_id` where given); an assistant message without calls is followed by `user` or the end;
 * tool-call arguments decode to a JSON object.
 */
export function checkMessageOrder(messages: readonly Message[]): RecordIssue[] {
  const issues: RecordIssue[] = [];
  const at = (i: number, field?: string) => `messages[${i}]${field ? `.${field}` : ""}`;
  let i = 0;
  if (messages[0]?.role === "system") i = 1;
  if (messages[i] && messages[i]!.role !== "user") {
    issues.push({
      path: at(i, "role"),
      message: "First non-system message must be user",
      value: messages[i]!.role,
    });
  }
  for (; i < messages.length; i++) {
    const m = messages[i]!;
    if (m.role === "system") {
      issues.push({
        path: at(i, "role"),
        message: "A system message may appear only at index 0",
        value: m.role,
      });
      continue;
    }
    if (m.role === "user") {
      const next = messages[i + 1];
      if (!next || next.role !== "assistant") {
        issues.push({
          path: at(i + 1, "role"),
          message: "A user message must be followed by an assistant message",
          value: next?.role ?? "end of dialogue",
        });
      }
      continue;
    }
    if (m.role === "tool") {
      issues.push({
        path: at(i, "role"),
        message: "A tool message must answer a tool call of the assistant message before it",
        value: m.role,
      });
      continue;
    }
    // assistant
    if (m.role === "assistant" && m.tool_calls.length > 0) {
      m.tool_calls.forEach((call, k) => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(call.function.arguments);
        } catch {
          issues.push({
            path: at(i, `tool_calls[${k}].function.arguments`),
            message: "Tool call arguments are not valid JSON",
            value: preview(call.function.arguments),
          });
          return;
        }
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
          issues.push({
            path: at(i, `tool_calls[${k}].function.arguments`),
            message: "Tool call arguments must decode to a JSON object",
            value: preview(call.function.arguments),
          });
        }
      });
      for (let k = 0; k < m.tool_calls.length; k++) {
        const t = messages[i + 1 + k];
        const call = m.tool_calls[k]!;
        if (!t || t.role !== "tool") {
          issues.push({
            path: at(i + 1 + k, "role"),
            message: `Tool call ${k} (${call.function.name}) of messages[${i}] has no tool response`,
            value: t?.role ?? "end of dialogue",
          });
          break;
        }
        if (t.tool_call_id !== undefined && call.id !== "" && t.tool_call_id !== call.id) {
          issues.push({
            path: at(i + 1 + k, "tool_call_id"),
            message: `Tool response does not answer call ${k} of messages[${i}] (id ${call.id})`,
            value: t.tool_call_id,
          });
        }
      }
      let j = i + 1;
      while (j < messages.length && messages[j]!.role === "tool" && j - i - 1 < m.tool_calls.length) j++;
      const after = messages[j];
      if (j - i - 1 === m.tool_calls.length && after && after.role !== "assistant") {
        issues.push({
          path: at(j, "role"),
          message: "Tool responses must be followed by an assistant message",
          value: after.role,
        });
      }
      i = j - 1;
    } else {
      const next = messages[i + 1];
      if (next && next.role !== "user") {
        issues.push({
          path: at(i + 1, "role"),
          message: "An assistant reply without tool calls must be followed by a user message or the end",
          value: next.role,
        });
      }
    }
  }
  return issues;
}

/**
 * Checks one checklist variant against the record's turn count: one item block per user turn,
 * unique item ids per turn, weights summing to 1 (± {@linkcode WEIGHT_TOLERANCE}), dependencies
 * naming existing `tool.content` items of the same turn, no self or cyclic dependency, and every item's
 * program check usable (`validateCheck`; with `tools`, naming only the record's tools).
 */
export function checkChecklist(
  variant: ChecklistVariant,
  userTurns: number,
  base = "checklists[0]",
  tools?: ReadonlySet<string>,
): RecordIssue[] {
  const issues: RecordIssue[] = [];
  if (variant.length !== userTurns) {
    issues.push({
      path: base,
      message: `Checklist has ${variant.length} turn blocks, expected one per user turn (${userTurns})`,
      value: variant.length,
    });
  }
  variant.forEach((items, t) => {
    const ids = new Map<string, number>();
    items.forEach((item, c) => {
      if (ids.has(item.id)) {
        issues.push({
          path: `${base}[${t}][${c}].id`,
          message: `Item id is not unique in turn ${t}`,
          value: item.id,
        });
      }
      ids.set(item.id, c);
    });
    const sum = items.reduce((s, it) => s + it.weight, 0);
    if (items.length > 0 && Math.abs(sum - 1) > WEIGHT_TOLERANCE) {
      issues.push({
        path: `${base}[${t}]`,
        message: `Checklist weights of turn ${t} sum to ${Number(sum.toFixed(6))}, expected 1`,
        value: Number(sum.toFixed(6)),
      });
    }
    items.forEach((item, c) => {
      if (item.check) {
        for (const i of validateCheck(item.check, tools, `${base}[${t}][${c}].check`)) {
          issues.push({ path: i.path, message: `Item ${item.id}: ${i.message}`, value: preview(i.value) });
        }
      }
      item.dependence.forEach((dep, d) => {
        const target = ids.get(dep);
        const path = `${base}[${t}][${c}].dependence[${d}]`;
        if (target === undefined) {
          issues.push({ path, message: `Dependency names no item of turn ${t}`, value: dep });
        } else if (dep === item.id) {
          issues.push({ path, message: "An item cannot depend on itself", value: dep });
        } else if (items[target]!.focus_on !== "tool.content") {
          issues.push({
            path,
            message: `Dependency must be a tool.content item, ${dep} focuses on ${items[target]!.focus_on}`,
            value: dep,
          });
        }
      });
    });
    // cycle check (depth-first over the dependency graph of this turn)
    const state = new Map<string, 1 | 2>();
    const visit = (id: string): boolean => {
      if (state.get(id) === 2) return false;
      if (state.get(id) === 1) return true;
      state.set(id, 1);
      const idx = ids.get(id);
      const deps = idx === undefined ? [] : items[idx]!.dependence;
      for (const d of deps) if (d !== id && ids.has(d) && visit(d)) return true;
      state.set(id, 2);
      return false;
    };
    for (const id of ids.keys()) {
      if (visit(id)) {
        issues.push({
          path: `${base}[${t}]`,
          message: `Dependencies of turn ${t} form a cycle through ${id}`,
          value: id,
        });
        break;
      }
    }
  });
  return issues;
}

/**
 * Parses and checks one raw record: zod shapes first (each issue with its path and value), then
 * message order and pairing, JSON arguments, unique tool names and every checklist variant.
 *
 * @example
 * ```ts
 * const v = validateRecord(JSON.parse(line));
 * if (!v.ok) for (const i of v.issues) console.error(`${i.path}: ${i.message} (${JSON.stringify(i.value)})`);
 * ```
 */
/** Options of {@linkcode validateRecord}. */
export interface ValidationOptions {
  /**
   * Accept tool messages with empty content (default false: a tool that answered nothing is usually broken data;
   * τ-bench's `think` tool answers "" by design, so its trajectories need this).
   */
  allowEmptyToolResponses?: boolean | undefined;
}

export function validateRecord(raw: unknown, opts: ValidationOptions = {}): RecordValidation {
  const parsed = TrajectoryRecordSchema.safeParse(raw);
  if (!parsed.success) {
    return {
      ok: false,
      issues: parsed.error.issues.map((iss) => ({
        path: pathOf(iss.path),
        message: iss.message,
        value: preview(valueAt(raw, iss.path)),
      })),
    };
  }
  const record = parsed.data;
  const issues: RecordIssue[] = [...checkMessageOrder(record.messages)];
  const names = new Map<string, number>();
  record.tools.forEach((tool, k) => {
    const name = tool.function.name;
    if (names.has(name)) {
      issues.push({
        path: `tools[${k}].function.name`,
        message: "Tool names must be unique within a record",
        value: name,
      });
    }
    names.set(name, k);
  });
  // What a run cannot replay or simulate: a call to a tool the record does not offer; an empty tool response
  // unless allowed.
  record.messages.forEach((m, i) => {
    m.tool_calls.forEach((c, k) => {
      if (!names.has(c.function.name)) {
        issues.push({
          path: `messages[${i}].tool_calls[${k}].function.name`,
          message: "The call names a tool the record does not offer",
          value: c.function.name,
        });
      }
    });
    if (m.role === "tool" && m.content.trim() === "" && !opts.allowEmptyToolResponses) {
      issues.push({
        path: `messages[${i}].content`,
        message: "Tool response is empty (allow with --allow-empty-tool-responses)",
        value: m.content,
      });
    }
  });
  const turns = countUserTurns(record.messages);
  record.checklists.forEach((variant, v) =>
    issues.push(...checkChecklist(variant, turns, `checklists[${v}]`, new Set(names.keys())))
  );
  return issues.length > 0 ? { ok: false, issues } : { ok: true, record };
}

/**
 * Converts the labeler's per-turn blocks (§1.3: maps for dependence and weight) into a stored
 * variant (§1.4: dependence and weight on each item), sorted by turn.
 */
export function variantFromTurnBlocks(blocks: readonly TurnBlock[]): ChecklistVariant {
  return [...blocks].sort((a, b) => a.turn - b.turn).map((block) =>
    block.checklist.map((item) => ({
      ...item,
      dependence: block.dependence[item.id] ?? [],
      weight: block.weight[item.id] ?? 0,
    }))
  );
}

/** Splits a record's messages into user turns: index ranges `[start, end)` starting at each user message. */
export function turnRanges(messages: readonly Pick<Message, "role">[]): { start: number; end: number }[] {
  const starts: number[] = [];
  messages.forEach((m, i) => {
    if (m.role === "user") starts.push(i);
  });
  return starts.map((start, k) => ({ start, end: starts[k + 1] ?? messages.length }));
}
