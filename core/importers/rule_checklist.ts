/**
 * A deterministic checklist derived from a record's own reference trajectory, for sample data and
 * tests where no labeling model is at hand. It is a stand-in for the LLM labeler of §1.4, not a copy
 * of it. Rules, per user turn (item ids `C0, C1, …` in order of appearance):
 *
 * 1. each reference tool call gives an `assistant.tool_calls` item "calls X with arguments matching
 *    …", `required_for_next_turn: true`;
 * 2. each call whose response is not an error (error = JSON object with an `error` key, or text
 *    starting with `Error`) gives a `tool.content` item right after it, `required_for_next_turn: false`;
 * 3. the turn's final assistant reply gives an `assistant.content.user_visible_reply` item,
 *    `required_for_next_turn: false`;
 * 4. an item depends on the `tool.content` item of an earlier call of the same turn when it uses that
 *    call's output: a call whose arguments contain a value of the output (strings of 3+ characters,
 *    numbers), the reply when its text contains a distinctive string of the output (4+ characters
 *    with a digit, or 8+ characters); a `tool.content` item inherits the dependencies of its call;
 * 5. program checks (`core/checks.ts`), where the rule knows the call: a call item checks a call to X whose
 *    every argument equals the reference's (loosely: case and spacing of text ignored), an argument that
 *    carries a value of an earlier result of the turn is compared with that result's value at the same path
 *    (`from_result`, so a simulated id or token also passes); its `tool.content` item checks the same call
 *    with a result that is not an error. A call with a free-text argument (more than
 *    {@linkcode FREE_TEXT_WORDS} words) or arguments that are not a JSON object gets no check, nor do replies:
 *    "equivalent free text" and "conveys the reference reply" need the judge;
 * 6. weights are proportional to units (call 2, tool result 1, reply 2), rounded to 4 decimals, with
 *    the rounding residue given to the first item of the largest unit, so each turn sums to 1 within
 *    1e-9.
 *
 * Pure, no I/O.
 *
 * @module
 */
import { type ChecklistItem, type ChecklistVariant, type Message, preview, turnRanges } from "../records.ts";
import { type CallCondition, type CheckValue, isErrorResult, parsedJson as parsed } from "../checks.ts";
import { isJsonObject } from "../canonical_json.ts";

/** A string argument with more words than this is free text, which a program check cannot compare. */
export const FREE_TEXT_WORDS = 5;

/** The weight units of rule 5. */
export const RULE_UNITS = { call: 2, toolContent: 1, reply: 2 } as const;

/**
 * Weights proportional to `units`, rounded to 4 decimals, with the residue on the first largest unit;
 * the float sum is 1 within 1e-9.
 */
export function ruleWeights(units: readonly number[]): number[] {
  const total = units.reduce((s, u) => s + u, 0);
  if (units.length === 0 || total <= 0) return units.map(() => 0);
  const w = units.map((u) => Math.round((u / total) * 1e4) / 1e4);
  const big = units.indexOf(Math.max(...units));
  const others = w.reduce((s, x, i) => (i === big ? s : s + x), 0);
  w[big] = Math.round((1 - others) * 1e4) / 1e4;
  return w;
}

function leaves(value: unknown, out: (string | number)[] = []): (string | number)[] {
  if (typeof value === "string" || typeof value === "number") out.push(value);
  else if (Array.isArray(value)) { for (const v of value) leaves(v, out); }
  else if (value !== null && typeof value === "object") {
    for (const v of Object.values(value)) {
      leaves(v, out);
    }
  }
  return out;
}

function outputValues(content: string): Set<string> {
  const vals = leaves(parsed(content)).filter((v) => typeof v === "number" || v.length >= 3);
  return new Set(vals.map(String));
}

/** The scalar leaves of a JSON value with their dotted paths (keys holding dots or spaces are left out). */
function leafPaths(value: unknown, prefix = ""): { path: string; value: string | number }[] {
  if (typeof value === "string" || typeof value === "number") return prefix ? [{ path: prefix, value }] : [];
  const entries: [string, unknown][] = Array.isArray(value)
    ? value.map((v, i) => [String(i), v])
    : isJsonObject(value)
    ? Object.entries(value)
    : [];
  return entries.flatMap(([k, v]) => /^[^.\s]+$/.test(k) ? leafPaths(v, prefix ? `${prefix}.${k}` : k) : []);
}

/** An earlier result of the turn.  */
interface Output {
  item: number;
  tool: string;
  values: Set<string>;
  leaves: { path: string; value: string | number }[];
}

/** The condition of rule 5 for a call, or undefined when a program cannot decide it. */
function callCondition(
  name: string,
  argsText: string,
  outputs: readonly Output[],
): CallCondition | undefined {
  const args = parsed(argsText);
  if (!isJsonObject(args)) return undefined;
  const equal: Record<string, CheckValue> = {};
  for (const [key, v] of Object.entries(args)) {
    if (!/^[^.\s]+$/.test(key)) return undefined;
    if (typeof v === "string" && v.trim().split(/\s+/).length > FREE_TEXT_WORDS) return undefined;
    const carried = typeof v === "number" || (typeof v === "string" && v.length >= 3);
    const source = carried ? outputs.findLast((o) => o.leaves.some((l) => l.value === v)) : undefined;
    const leaf = source?.leaves.find((l) => l.value === v);
    equal[key] = source && leaf
      ? { from_result: { tool: source.tool, path: leaf.path } }
      : { const: v } as CheckValue;
  }
  return { kind: "call", tool: name, equal, loose: true };
}

function distinctive(value: string): boolean {
  return value.length >= 4 && (/\d/.test(value) || value.length >= 8);
}

function replyText(content: string): string {
  const close = content.lastIndexOf("</think>");
  return (close >= 0 ? content.slice(close + "</think>".length) : content).trim();
}

interface Draft {
  core: Omit<ChecklistItem, "id" | "weight" | "dependence">;
  deps: number[];
  units: number;
}

/**
 * Derives one checklist variant (one item block per user turn) from a record's messages by the rules
 * of this module. The result passes `checkChecklist` for any record that passes `checkMessageOrder`.
 */
export function deriveRuleChecklist(record: { messages: readonly Message[] }): ChecklistVariant {
  const msgs = record.messages;
  return turnRanges(msgs).map(({ start, end }, turn) => {
    const drafts: Draft[] = [];
    const outputs: Output[] = [];
    let reply: { text: string; step: number } | undefined;
    for (let i = start + 1; i < end; i++) {
      const m = msgs[i]!;
      if (m.role !== "assistant") continue;
      if (m.tool_calls.length === 0) {
        const text = replyText(m.content);
        if (text !== "") reply = { text, step: i - start };
        continue;
      }
      m.tool_calls.forEach((call, k) => {
        const name = call.function.name;
        const args = call.function.arguments;
        const argValues = new Set(leaves(parsed(args)).map(String));
        const deps = outputs.filter((o) => [...o.values].some((v) => argValues.has(v))).map((o) => o.item);
        const keys = Object.keys((parsed(args) ?? {}) as object);
        const condition = callCondition(name, args, outputs);
        drafts.push({
          core: {
            evidence: [{ turn, step: i - start, from: "assistant.tool_calls", snippet: `${name}(${args})` }],
            focus_on: "assistant.tool_calls",
            question: `Does the assistant call ${name} with arguments matching ${args}?`,
            pass_condition:
              `A tool call to ${name} whose arguments match the reference ${args}: the same parameters with equivalent values (formatting of free text may differ).`,
            failure_examples: [
              `No call to ${name} in this turn.`,
              keys.length > 0
                ? `${name} is called with a missing or different value for ${keys[0]}.`
                : `${name} is called with parameters it does not take.`,
            ],
            required_for_next_turn: true,
            ...(condition ? { check: { v: 1 as const, pass: condition } } : {}),
          },
          deps,
          units: RULE_UNITS.call,
        });
        const response = msgs[i + 1 + k];
        if (response?.role !== "tool" || isErrorResult(response.content)) return;
        const snippet = String(preview(response.content, 300));
        outputs.push({
          item: drafts.length,
          tool: name,
          values: outputValues(response.content),
          leaves: leafPaths(parsed(response.content)),
        });
        drafts.push({
          core: {
            evidence: [{ turn, step: i + 1 + k - start, from: "tool.content", snippet }],
            focus_on: "tool.content",
            question: `Does the ${name} call with arguments matching ${args} return a successful result?`,
            pass_condition:
              `The response to that ${name} call is a successful result, not an error (the reference call returned: ${snippet})`,
            failure_examples: [`The ${name} response is an error.`, `The ${name} response is empty.`],
            ...(condition
              ? { check: { v: 1 as const, pass: { ...condition, returns: "ok" as const } } }
              : {}),
            required_for_next_turn: false,
          },
          deps,
          units: RULE_UNITS.toolContent,
        });
      });
    }
    if (reply) {
      const lower = reply.text.toLowerCase();
      const deps = outputs
        .filter((o) => [...o.values].some((v) => distinctive(v) && lower.includes(v.toLowerCase())))
        .map((o) => o.item);
      drafts.push({
        core: {
          evidence: [{
            turn,
            step: reply.step,
            from: "assistant.content.user_visible_reply",
            snippet: reply.text,
          }],
          focus_on: "assistant.content.user_visible_reply",
          question: "Does the assistant's reply to the user convey the content of the reference reply?",
          pass_condition:
            `The user-visible reply conveys the same information, confirmation or question as the reference reply: "${reply.text}"`,
          failure_examples: [
            "The reply states results that the tool responses do not support.",
            "The reply leaves out what the user asked for or asks for something else.",
          ],
          required_for_next_turn: false,
        },
        deps,
        units: RULE_UNITS.reply,
      });
    }
    const weights = ruleWeights(drafts.map((d) => d.units));
    return drafts.map((d, c) => ({
      id: `C${c}`,
      ...d.core,
      dependence: d.deps.map((j) => `C${j}`),
      weight: weights[c]!,
    }));
  });
}
