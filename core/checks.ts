/**
 * Program-checked checklist items (beyond CM2): an item may carry a `check`, a small declarative predicate over
 * the dialogue that a program answers exactly, with no judge call. A check is data, never code. Version 1:
 *
 * ```json
 * { "v": 1, "pass": { "kind": "call", "tool": "get_weather", "equal": { "city": { "const": "Paris" } } } }
 * ```
 *
 * `pass` is one condition ({@linkcode Condition}). Every condition reads a *window*: the current user turn from
 * its user message through the judged assistant step and the tool messages right after it, exactly what the LLM
 * judge reads as "Current Messages to Evaluate". So a check, like the judge, answers "is this satisfied after
 * step s?", and the reward math (every preset, every level) is the same whichever answered.
 *
 * - `call`: some assistant step of the window calls `tool`; its arguments decode to a JSON object that
 *   validates against `args` (a JSON schema, checked with ajv) when given, and whose value at each path of
 *   `equal` equals the given value; with `returns`, that call's tool result is in the window and is not an
 *   error (`"ok"`) or is one (`"error"`). Without `returns` a call counts as made whatever it returned. An
 *   error is a JSON object with a non-null `error` field, text that starts with "error", or the engine's own
 *   error result (a call it could not run).
 * - `no_call`: no step of the window calls `tool` (or any tool, when `tool` is absent).
 * - `reply`: the user-visible replies of the window's steps without tool calls (the text after `</think>`, or
 *   the whole content without a think block) contain every value of `contains` and match the regular
 *   expression `matches` (JavaScript syntax, flag `i` when `loose`). False when the window has no reply yet.
 * - `all`, `any` (a non-empty list) and `not` (one condition) combine conditions.
 *
 * A value is `{ "const": <JSON> }` or `{ "from_result": { "tool": T, "path": "a.b.0" } }`: the value at `path`
 * (dots; a number indexes an array) in the JSON of the latest non-error result of `T` before the message being
 * checked, anywhere earlier in the episode ("passes the id that get_user returned"). A value that cannot be
 * found makes its condition false. Paths of `equal` read the call's arguments the same way.
 *
 * Equality is JSON equality (key order ignored). With `loose: true` strings compare after Unicode
 * normalisation, lower-casing, trimming and collapsing white space, and a number equals its decimal string:
 * what "the same value, formatting of free text may differ" means to a program.
 *
 * {@linkcode validateCheck} adds what the shape cannot say: `args` compiles, `matches` compiles, every named
 * tool is one of the record's. Pure, no I/O.
 *
 * @module
 */
import { Ajv, type ValidateFunction } from "ajv";
import { z } from "zod";
import { canonicalJson, isJsonObject } from "./canonical_json.ts";
import type { ChatMessage } from "./llm_types.ts";
import { isErrorToolContent } from "./tool_calls.ts";

/** The version of the check language this module reads. */
export const CHECK_VERSION = 1;

/** Most nesting of `all` / `any` / `not`. */
export const MAX_CHECK_DEPTH = 4;

const PATH_RE = /^[^.\s]+(\.[^.\s]+)*$/;
const PathSchema = z.string().regex(PATH_RE, "A path is names and array indices joined by dots, e.g. a.b.0");
const ToolNameSchema = z.string().min(1);

/** A value a condition compares with: a constant, or one taken from an earlier tool result. */
export const CheckValueSchema = z.union([
  z.strictObject({ const: z.json() }),
  z.strictObject({ from_result: z.strictObject({ tool: ToolNameSchema, path: PathSchema.optional() }) }),
]);
export type CheckValue = z.infer<typeof CheckValueSchema>;

const CallSchema = z.strictObject({
  kind: z.literal("call"),
  tool: ToolNameSchema,
  args: z.record(z.string(), z.json()).optional(),
  equal: z.record(PathSchema, CheckValueSchema).optional(),
  loose: z.boolean().optional(),
  returns: z.enum(["ok", "error"]).optional(),
});
const NoCallSchema = z.strictObject({ kind: z.literal("no_call"), tool: ToolNameSchema.optional() });
const ReplySchema = z.strictObject({
  kind: z.literal("reply"),
  contains: z.array(CheckValueSchema).optional(),
  matches: z.string().min(1).optional(),
  loose: z.boolean().optional(),
});

/** One condition of a check (see the module doc). */
export type Condition =
  | z.infer<typeof CallSchema>
  | z.infer<typeof NoCallSchema>
  | z.infer<typeof ReplySchema>
  | { kind: "all" | "any"; of: Condition[] }
  | { kind: "not"; of: Condition };

/** The `call` condition. */
export type CallCondition = z.infer<typeof CallSchema>;

/** The zod schema of a {@linkcode Condition}. */
export const ConditionSchema: z.ZodType<Condition> = z.lazy(() =>
  z.discriminatedUnion("kind", [
    CallSchema,
    NoCallSchema,
    ReplySchema,
    z.strictObject({ kind: z.enum(["all", "any"]), of: z.array(ConditionSchema).min(1) }),
    z.strictObject({ kind: z.literal("not"), of: ConditionSchema }),
  ])
);

/** A checklist item's check: the language version and the condition that makes the item pass. */
export const CheckSchema = z.strictObject({
  v: z.literal(CHECK_VERSION),
  pass: ConditionSchema,
});
export type Check = z.infer<typeof CheckSchema>;

/** One problem with a check: where inside the check, what is wrong, and the value. */
export interface CheckIssue {
  path: string;
  message: string;
  value?: unknown;
}

const ajv = new Ajv({ strict: false, allErrors: false, validateFormats: false });
const validators = new Map<string, ValidateFunction | string>();

/** The compiled validator of a JSON schema (cached by its text), or the compile error. */
function validatorOf(schema: Record<string, unknown>): ValidateFunction | string {
  const key = canonicalJson(schema);
  let v = validators.get(key);
  if (v === undefined) {
    try {
      v = ajv.compile(schema);
    } catch (e) {
      v = e instanceof Error ? e.message : String(e);
    }
    validators.set(key, v);
  }
  return v;
}

function regexOf(source: string, loose: boolean): RegExp | string {
  try {
    return new RegExp(source, loose ? "iu" : "u");
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/**
 * What the shape of a check cannot say, for a check that parsed: `args` schemas and `matches` expressions
 * compile, every tool named is one of `tools` (when given), nesting stays within {@linkcode MAX_CHECK_DEPTH}.
 * Paths start at `base` (e.g. `checklists[0][1][2].check`).
 */
export function validateCheck(check: Check, tools?: ReadonlySet<string>, base = "check"): CheckIssue[] {
  const issues: CheckIssue[] = [];
  const tool = (name: string | undefined, at: string) => {
    if (name !== undefined && tools && !tools.has(name)) {
      issues.push({ path: at, message: "The check names a tool the record does not offer", value: name });
    }
  };
  const value = (v: CheckValue, at: string) => {
    if ("from_result" in v) tool(v.from_result.tool, `${at}.from_result.tool`);
  };
  const walk = (c: Condition, at: string, depth: number) => {
    if (depth > MAX_CHECK_DEPTH) {
      issues.push({ path: at, message: `Checks nest at most ${MAX_CHECK_DEPTH} levels deep`, value: c.kind });
      return;
    }
    switch (c.kind) {
      case "call": {
        tool(c.tool, `${at}.tool`);
        if (c.args) {
          const v = validatorOf(c.args);
          if (typeof v === "string") {
            issues.push({ path: `${at}.args`, message: `Not a usable JSON schema: ${v}`, value: c.args });
          }
        }
        for (const [p, v] of Object.entries(c.equal ?? {})) value(v, `${at}.equal.${p}`);
        break;
      }
      case "no_call":
        tool(c.tool, `${at}.tool`);
        break;
      case "reply": {
        (c.contains ?? []).forEach((v, k) => value(v, `${at}.contains[${k}]`));
        if (c.matches !== undefined) {
          const re = regexOf(c.matches, c.loose ?? false);
          if (typeof re === "string") {
            issues.push({
              path: `${at}.matches`,
              message: `Not a regular expression: ${re}`,
              value: c.matches,
            });
          }
        }
        break;
      }
      case "all":
      case "any":
        c.of.forEach((x, k) => walk(x, `${at}.of[${k}]`, depth + 1));
        break;
      case "not":
        walk(c.of, `${at}.of`, depth + 1);
        break;
    }
  };
  walk(check.pass, `${base}.pass`, 1);
  return issues;
}

/**
 * Parses a raw check and validates it; the issues carry paths from `base`. Used where checks arrive outside a
 * record (the labeler's answer).
 */
export function parseCheck(
  raw: unknown,
  tools?: ReadonlySet<string>,
  base = "check",
): { ok: true; check: Check } | { ok: false; issues: CheckIssue[] } {
  const r = CheckSchema.safeParse(raw);
  if (!r.success) {
    return {
      ok: false,
      issues: r.error.issues.map((i) => ({
        path: [base, ...i.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`)].join(""),
        message: i.message,
      })),
    };
  }
  const issues = validateCheck(r.data, tools, base);
  return issues.length ? { ok: false, issues } : { ok: true, check: r.data };
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/** The JSON value of a text, or the text itself when it is not JSON. */
export function parsedJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Whether a tool result is an error: a JSON object with a non-null `error` field, text starting "error", or the
 * engine's own error marker (`isErrorToolContent`).
 */
export function isErrorResult(content: string): boolean {
  if (isErrorToolContent(content)) return true;
  const v = parsedJson(content);
  if (isJsonObject(v) && "error" in v) return v.error !== null;
  return typeof v === "string" && /^\s*error\b/i.test(v);
}

/** The value at a dotted path (`undefined` where it leads nowhere). */
export function valueAtPath(root: unknown, path: string | undefined): unknown {
  if (path === undefined || path === "") return root;
  let cur: unknown = root;
  for (const part of path.split(".")) {
    if (Array.isArray(cur) && /^\d+$/.test(part)) cur = cur[Number(part)];
    else if (isJsonObject(cur) && Object.hasOwn(cur, part)) cur = cur[part];
    else return undefined;
  }
  return cur;
}

function normText(s: string): string {
  return s.normalize("NFKC").toLowerCase().replace(/\s+/g, " ").trim();
}

/** JSON equality (key order ignored); `loose` as in the module doc. */
export function valuesEqual(a: unknown, b: unknown, loose = false): boolean {
  if (!loose) return canonicalJson(a) === canonicalJson(b);
  if (typeof a === "string" || typeof b === "string") {
    const scalar = (x: unknown) => typeof x === "string" || typeof x === "number" || typeof x === "boolean";
    return scalar(a) && scalar(b) && normText(String(a)) === normText(String(b));
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length &&
      a.every((x, i) => valuesEqual(x, b[i], true));
  }
  if (isJsonObject(a) && isJsonObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length &&
      ka.every((k) => Object.hasOwn(b, k) && valuesEqual(a[k], b[k], true));
  }
  return canonicalJson(a) === canonicalJson(b);
}

/** One tool call of the episode with where it sits and what answered it. */
interface CallSite {
  /** Message index of the assistant step. */
  at: number;
  name: string;
  args: unknown;
  /** Message index of its tool result, if any. */
  resultAt: number | null;
}

/** The calls of the episode in order, each paired with its tool message (by id, else by position). */
function callSites(messages: readonly ChatMessage[]): CallSite[] {
  const out: CallSite[] = [];
  messages.forEach((m, i) => {
    if (m.role !== "assistant" || !m.tool_calls?.length) return;
    const answers: number[] = [];
    for (let j = i + 1; messages[j]?.role === "tool"; j++) answers.push(j);
    m.tool_calls.forEach((c, k) => {
      const byId = answers.find((j) => c.id !== undefined && messages[j]!.tool_call_id === c.id);
      out.push({
        at: i,
        name: c.function.name,
        args: parsedJson(c.function.arguments),
        resultAt: byId ?? answers[k] ?? null,
      });
    });
  });
  return out;
}

/** The window of the judged step: message indices `[start, end)`. */
export interface CheckWindow {
  /** The turn's user message. */
  start: number;
  /** One past the judged assistant step and the tool messages right after it. */
  end: number;
}

/** The window of the assistant step at `stepIndex` of the turn starting at `userIndex`. */
export function checkWindow(
  messages: readonly ChatMessage[],
  userIndex: number,
  stepIndex: number,
): CheckWindow {
  let end = stepIndex + 1;
  while (messages[end]?.role === "tool") end++;
  return { start: userIndex, end };
}

function replyOf(content: string): string {
  const close = content.indexOf("</think>");
  if (close >= 0) return content.slice(close + "</think>".length).trim();
  return content.includes("<think>") ? "" : content.trim();
}

/**
 * Answers a check for one window of a dialogue. Deterministic; never throws for a check that passed
 * {@linkcode validateCheck} (an unusable schema or expression reads as false).
 */
export function evaluateCheck(check: Check, messages: readonly ChatMessage[], window: CheckWindow): boolean {
  const sites = callSites(messages);
  const inWindow = sites.filter((s) => s.at >= window.start && s.at < window.end);
  const resolve = (v: CheckValue, before: number): { found: boolean; value?: unknown } => {
    if ("const" in v) return { found: true, value: v.const };
    const src = v.from_result;
    for (let k = sites.length - 1; k >= 0; k--) {
      const s = sites[k]!;
      if (s.name !== src.tool || s.resultAt === null || s.resultAt >= before) continue;
      const content = messages[s.resultAt]!.content;
      if (isErrorResult(content)) continue;
      const value = valueAtPath(parsedJson(content), src.path);
      return value === undefined ? { found: false } : { found: true, value };
    }
    return { found: false };
  };
  const test = (c: Condition): boolean => {
    switch (c.kind) {
      case "call":
        return inWindow.some((s) => {
          if (s.name !== c.tool || !isJsonObject(s.args)) return false;
          if (c.returns !== undefined) {
            if (s.resultAt === null || s.resultAt >= window.end) return false;
            if (isErrorResult(messages[s.resultAt]!.content) !== (c.returns === "error")) return false;
          }
          if (c.args) {
            const v = validatorOf(c.args);
            if (typeof v === "string" || !v(s.args)) return false;
          }
          return Object.entries(c.equal ?? {}).every(([p, want]) => {
            const got = valueAtPath(s.args, p);
            const r = resolve(want, s.at);
            return got !== undefined && r.found && valuesEqual(got, r.value, c.loose ?? false);
          });
        });
      case "no_call":
        return !inWindow.some((s) => c.tool === undefined || s.name === c.tool);
      case "reply": {
        const loose = c.loose ?? false;
        const replies: { at: number; text: string }[] = [];
        for (let i = window.start; i < window.end; i++) {
          const m = messages[i]!;
          if (m.role === "assistant" && !m.tool_calls?.length) {
            const text = replyOf(m.content);
            if (text !== "") replies.push({ at: i, text });
          }
        }
        if (replies.length === 0) return false;
        const all = replies.map((r) => r.text).join("\n");
        const hay = loose ? normText(all) : all;
        const last = replies.at(-1)!.at;
        const contained = (c.contains ?? []).every((v) => {
          const r = resolve(v, last);
          if (!r.found) return false;
          const needle = typeof r.value === "string" ? r.value : canonicalJson(r.value);
          return hay.includes(loose ? normText(needle) : needle);
        });
        if (!contained) return false;
        if (c.matches === undefined) return true;
        const re = regexOf(c.matches, loose);
        return typeof re !== "string" && re.test(all);
      }
      case "all":
        return c.of.every(test);
      case "any":
        return c.of.some(test);
      case "not":
        return !test(c.of);
    }
  };
  return test(check.pass);
}
