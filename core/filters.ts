/**
 * CM2's rule-based data filters (`cm2-reference.md` §1.1): seven named criteria, each a pure check
 * that returns the first reason a record fails it, or `undefined`. {@linkcode filterRecords} runs the
 * enabled ones over a dataset and counts rejections per criterion. Pure, no I/O.
 *
 * | criterion | a record fails when |
 * | --- | --- |
 * | `message_order` | the role order or call/response pairing of §1.1 is broken (`checkMessageOrder`) |
 * | `think_tags` | an assistant content lacks exactly one `<think>` followed by exactly one `</think>` |
 * | `tool_response_json_valid` | a tool message content is empty or not valid JSON |
 * | `duplicate_tools_by_name` | two tools of the record share a name |
 * | `tool_schema` | a recorded call names an unknown tool, misses a required argument, passes an argument the schema does not declare, or has a wrong type |
 * | `tool_call_arguments_json` | a call's arguments do not decode to a JSON object |
 * | `multi_turn_multi_step` | the record has fewer than `minUserTurns` user turns and no turn with `minAssistantSteps` assistant messages |
 *
 * @module
 */
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import { checkMessageOrder, countUserTurns, preview, type TrajectoryRecord, turnRanges } from "./records.ts";

/** The seven criteria, in the order they are checked and reported. */
export const FILTER_CRITERIA = [
  "message_order",
  "think_tags",
  "tool_response_json_valid",
  "duplicate_tools_by_name",
  "tool_schema",
  "tool_call_arguments_json",
  "multi_turn_multi_step",
] as const;

/** One criterion name. */
export type FilterCriterion = typeof FILTER_CRITERIA[number];

/** Why a record fails a criterion: the first offending field, what is wrong and its value. */
export interface FilterReason {
  criterion: FilterCriterion;
  path: string;
  message: string;
  value?: unknown;
}

/** Options of the filters. */
export interface FilterOptions {
  /** Criteria to run (default: all seven). */
  criteria?: readonly FilterCriterion[];
  /** Criteria to skip, applied after `criteria` (e.g. `["think_tags"]` for data without thinking). */
  disabled?: readonly FilterCriterion[];
  /** `multi_turn_multi_step`: user turns that make a record multi-turn (default 2). */
  minUserTurns?: number;
  /** `multi_turn_multi_step`: assistant messages within one turn that make it multi-step (default 2). */
  minAssistantSteps?: number;
  /** `multi_turn_multi_step`: pass when either holds (`"any"`, default) or only when both hold (`"all"`). */
  multiMode?: "any" | "all";
}

/** The state the checks share over one dataset (compiled tool schemas). */
export interface FilterContext {
  options: FilterOptions;
  validators: ToolSchemaValidators;
}

/** One criterion's check. */
export type CriterionCheck = (record: TrajectoryRecord, context: FilterContext) => FilterReason | undefined;

const reason = (criterion: FilterCriterion, path: string, message: string, value?: unknown): FilterReason =>
  value === undefined ? { criterion, path, message } : { criterion, path, message, value: preview(value) };

function parseArgs(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v);

/** `message_order`: the role order and call/response pairing of §1.1 (argument decoding is its own criterion). */
export function checkOrder(record: TrajectoryRecord): FilterReason | undefined {
  const issue = checkMessageOrder(record.messages).find((i) => !i.path.endsWith(".function.arguments"));
  return issue && reason("message_order", issue.path, issue.message, issue.value);
}

function count(text: string, tag: string): number {
  return text.split(tag).length - 1;
}

/** `think_tags`: every assistant content holds exactly one `<think>` and, after it, exactly one `</think>`. */
export function checkThinkTags(record: TrajectoryRecord): FilterReason | undefined {
  for (let i = 0; i < record.messages.length; i++) {
    const m = record.messages[i]!;
    if (m.role !== "assistant") continue;
    const open = count(m.content, "<think>");
    const close = count(m.content, "</think>");
    const path = `messages[${i}].content`;
    if (open !== 1) {
      return reason("think_tags", path, `Assistant content has ${open} <think> tags, expected 1`, m.content);
    }
    if (close !== 1) {
      return reason(
        "think_tags",
        path,
        `Assistant content has ${close} </think> tags, expected 1`,
        m.content,
      );
    }
    if (m.content.indexOf("</think>") < m.content.indexOf("<think>")) {
      return reason("think_tags", path, "Assistant content closes </think> before <think>", m.content);
    }
  }
  return undefined;
}

/** `tool_response_json_valid`: every tool message content is non-empty valid JSON. */
export function checkToolResponseJson(record: TrajectoryRecord): FilterReason | undefined {
  for (let i = 0; i < record.messages.length; i++) {
    const m = record.messages[i]!;
    if (m.role !== "tool") continue;
    const path = `messages[${i}].content`;
    if (m.content.trim() === "") {
      return reason("tool_response_json_valid", path, "Tool response is empty", m.content);
    }
    if (!parseArgs(m.content).ok) {
      return reason("tool_response_json_valid", path, "Tool response is not valid JSON", m.content);
    }
  }
  return undefined;
}

/** `duplicate_tools_by_name`: tool names are unique within the record. */
export function checkDuplicateTools(record: TrajectoryRecord): FilterReason | undefined {
  const seen = new Set<string>();
  for (let k = 0; k < record.tools.length; k++) {
    const name = record.tools[k]!.function.name;
    if (seen.has(name)) {
      return reason(
        "duplicate_tools_by_name",
        `tools[${k}].function.name`,
        "Tool name is not unique in the record",
        name,
      );
    }
    seen.add(name);
  }
  return undefined;
}

/** `tool_call_arguments_json`: every call's arguments decode to a JSON object. */
export function checkArgumentsJson(record: TrajectoryRecord): FilterReason | undefined {
  for (let i = 0; i < record.messages.length; i++) {
    const calls = record.messages[i]!.tool_calls;
    for (let k = 0; k < calls.length; k++) {
      const args = calls[k]!.function.arguments;
      const path = `messages[${i}].tool_calls[${k}].function.arguments`;
      const p = parseArgs(args);
      if (!p.ok) {
        return reason("tool_call_arguments_json", path, "Tool call arguments are not valid JSON", args);
      }
      if (!isPlainObject(p.value)) {
        return reason(
          "tool_call_arguments_json",
          path,
          "Tool call arguments must decode to a JSON object",
          args,
        );
      }
    }
  }
  return undefined;
}

const PY_TYPES: Record<string, string> = {
  str: "string",
  int: "integer",
  float: "number",
  bool: "boolean",
  dict: "object",
  list: "array",
  tuple: "array",
};

/** Maps Python-style type names (`str`, `int`, `dict`, …) found in some datasets to JSON Schema types. */
function jsonSchemaTypes(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(jsonSchemaTypes);
  if (!isPlainObject(schema)) return schema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === "type" && typeof v === "string") {
      if (v === "any") continue;
      out[k] = PY_TYPES[v] ?? v;
    } else out[k] = jsonSchemaTypes(v);
  }
  return out;
}

/**
 * Compiles tool parameter schemas with ajv (non-strict, formats not checked) and caches them by
 * schema text. A schema whose top level declares `properties` but no `additionalProperties` gets
 * `additionalProperties: false`, so undeclared arguments are caught.
 */
export class ToolSchemaValidators {
  readonly #ajv = new Ajv({ strict: false, allErrors: false, validateFormats: false });
  readonly #cache = new Map<string, ValidateFunction | string>();

  /** The compiled validator of `parameters`, or the compile error message. */
  get(parameters: Record<string, unknown>): ValidateFunction | string {
    const key = JSON.stringify(parameters);
    let v = this.#cache.get(key);
    if (v === undefined) {
      const schema = jsonSchemaTypes(parameters) as Record<string, unknown>;
      if (isPlainObject(schema.properties) && schema.additionalProperties === undefined) {
        schema.additionalProperties = false;
      }
      try {
        v = this.#ajv.compile(schema);
      } catch (e) {
        v = e instanceof Error ? e.message : String(e);
      }
      this.#cache.set(key, v);
    }
    return v;
  }
}

function describeAjvError(tool: string, e: ErrorObject): { message: string; value: unknown } {
  const at = e.instancePath === "" ? "" : ` ${e.instancePath.slice(1).replaceAll("/", ".")}`;
  if (e.keyword === "required") {
    const name = String((e.params as { missingProperty?: unknown }).missingProperty);
    return { message: `Required argument ${name} of ${tool} is missing`, value: name };
  }
  if (e.keyword === "additionalProperties") {
    const name = String((e.params as { additionalProperty?: unknown }).additionalProperty);
    return { message: `Argument ${name} is not a parameter of ${tool}`, value: name };
  }
  return { message: `Argument${at} of ${tool} ${e.message ?? "does not match its schema"}`, value: e.params };
}

/** `tool_schema`: each recorded call names a tool of the record and its arguments satisfy that tool's schema. */
export function checkToolSchema(record: TrajectoryRecord, context: FilterContext): FilterReason | undefined {
  const tools = new Map(record.tools.map((t) => [t.function.name, t]));
  for (let i = 0; i < record.messages.length; i++) {
    const calls = record.messages[i]!.tool_calls;
    for (let k = 0; k < calls.length; k++) {
      const fn = calls[k]!.function;
      const base = `messages[${i}].tool_calls[${k}].function`;
      const tool = tools.get(fn.name);
      if (!tool) {
        return reason(
          "tool_schema",
          `${base}.name`,
          "Tool call names a tool the record does not offer",
          fn.name,
        );
      }
      const args = parseArgs(fn.arguments);
      if (!args.ok || !isPlainObject(args.value)) continue; // counted by tool_call_arguments_json
      const validate = context.validators.get(tool.function.parameters);
      if (typeof validate === "string") {
        return reason(
          "tool_schema",
          `${base}.name`,
          `Schema of ${fn.name} does not compile: ${validate}`,
          fn.name,
        );
      }
      if (!validate(args.value)) {
        const d = describeAjvError(fn.name, validate.errors![0]!);
        return reason("tool_schema", `${base}.arguments`, d.message, d.value);
      }
    }
  }
  return undefined;
}

/** `multi_turn_multi_step`: enough user turns, or a turn with enough assistant steps (see {@linkcode FilterOptions}). */
export function checkMultiTurnMultiStep(
  record: TrajectoryRecord,
  context: FilterContext,
): FilterReason | undefined {
  const { minUserTurns = 2, minAssistantSteps = 2, multiMode = "any" } = context.options;
  const turns = countUserTurns(record.messages);
  const steps = Math.max(
    0,
    ...turnRanges(record.messages).map(({ start, end }) =>
      record.messages.slice(start, end).filter((m) => m.role === "assistant").length
    ),
  );
  const multiTurn = turns >= minUserTurns;
  const multiStep = steps >= minAssistantSteps;
  if (multiMode === "any" ? multiTurn || multiStep : multiTurn && multiStep) return undefined;
  return reason(
    "multi_turn_multi_step",
    "messages",
    `Record has ${turns} user turns and at most ${steps} assistant steps in a turn, expected ${minUserTurns} turns ${
      multiMode === "any" ? "or" : "and"
    } ${minAssistantSteps} steps`,
    { turns, steps },
  );
}

/** The check of each criterion. */
export const CRITERION_CHECKS: Readonly<Record<FilterCriterion, CriterionCheck>> = {
  message_order: checkOrder,
  think_tags: checkThinkTags,
  tool_response_json_valid: checkToolResponseJson,
  duplicate_tools_by_name: checkDuplicateTools,
  tool_schema: checkToolSchema,
  tool_call_arguments_json: checkArgumentsJson,
  multi_turn_multi_step: checkMultiTurnMultiStep,
};

/** The criteria that `options` enables, in {@linkcode FILTER_CRITERIA} order. */
export function enabledCriteria(options: FilterOptions = {}): FilterCriterion[] {
  for (const name of [...(options.criteria ?? []), ...(options.disabled ?? [])]) {
    if (!(FILTER_CRITERIA as readonly string[]).includes(name)) {
      throw new Error(`Unknown filter criterion ${name}`);
    }
  }
  return FILTER_CRITERIA.filter((c) =>
    (options.criteria ?? FILTER_CRITERIA).includes(c) && !(options.disabled ?? []).includes(c)
  );
}

/** A new context for checking records one by one with {@linkcode checkRecord}. */
export function createFilterContext(options: FilterOptions = {}): FilterContext {
  return { options, validators: new ToolSchemaValidators() };
}

/** Every reason the record fails, one per failed enabled criterion. */
export function checkRecord(record: TrajectoryRecord, context: FilterContext): FilterReason[] {
  const out: FilterReason[] = [];
  for (const c of enabledCriteria(context.options)) {
    const r = CRITERION_CHECKS[c](record, context);
    if (r) out.push(r);
  }
  return out;
}

/** The result of {@linkcode filterRecords}. */
export interface FilterResult {
  total: number;
  kept: TrajectoryRecord[];
  rejected: { uuid: string; reasons: FilterReason[] }[];
  /** Records failing each enabled criterion (a record failing several counts once in each). */
  counts: Partial<Record<FilterCriterion, number>>;
  enabled: FilterCriterion[];
}

/**
 * Runs the enabled criteria over every record: records failing none are kept; the others are listed
 * with all their reasons.
 *
 * @example
 * ```ts
 * const r = filterRecords(records, { disabled: ["think_tags"] });
 * console.log(r.kept.length, r.counts);
 * ```
 */
export function filterRecords(
  records: readonly TrajectoryRecord[],
  options: FilterOptions = {},
): FilterResult {
  const context = createFilterContext(options);
  const enabled = enabledCriteria(options);
  const result: FilterResult = { total: records.length, kept: [], rejected: [], counts: {}, enabled };
  for (const c of enabled) result.counts[c] = 0;
  for (const record of records) {
    const reasons = checkRecord(record, context);
    for (const r of reasons) result.counts[r.criterion]! += 1;
    if (reasons.length === 0) result.kept.push(record);
    else result.rejected.push({ uuid: record.uuid, reasons });
  }
  return result;
}
