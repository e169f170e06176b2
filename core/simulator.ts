/**
 * The hybrid tool simulator (`cm2-reference.md` §3), as pure functions: the caller makes the one LLM
 * call when {@linkcode resolveToolCall} asks for it, so that each simulation can be its own activity.
 *
 * Order of checks for one call (first match wins):
 * 1. unknown tool (not among the record's tools) → `error` (`unknown-tool`);
 * 2. exact replay: a recorded call of the same dialogue with the same tool and the same canonical
 *    arguments ({@linkcode canonicalJson}) → its recorded output, as is (`replay`);
 * 3. shallow schema validation (§3.3 step 3) → `error` (`schema`) with a `SCHEMA_VALIDATION_FAILED` body;
 * 4. the consistency cache, keyed by (tool, canonical arguments) → the earlier simulated output (`cached`);
 * 5. otherwise an LLM simulation request (`simulate`), to be parsed with {@linkcode parseSimulation} and
 *    stored with {@linkcode cachePut}.
 *
 * Because `JSON.parse` gives the same number for `1` and `1.0`, such arguments match each other here
 * (the Python reference would not); see `core/canonical_json.ts`.
 *
 * Pure, no I/O.
 *
 * @module
 */
import { canonicalJson, isJsonObject, pyJson, stripLoneSurrogates } from "./canonical_json.ts";
import type { ChatRequest, ChatResult, Sampling } from "./llm_types.ts";
import type { Message, ToolSchema } from "./records.ts";

/** Version of the simulation prompt; part of any cache key built over simulator requests. */
export const SIMULATOR_PROMPT_VERSION = "cm2-sim-v1";

/** Which recorded calls may be replayed, and shown as examples. */
export type ReplayScope = "all-turns" | "up-to-current-turn";

/** Options of {@linkcode buildToolIndex}. */
export interface SimulatorOptions {
  /**
   * `all-turns` (default, the reference): every recorded call of the dialogue, future turns included, can
   * be replayed and is shown as a few-shot example. `up-to-current-turn`: only calls recorded in turns
   * up to the caller's current turn (no look-ahead), for both replay and examples.
   */
  replayScope?: ReplayScope;
  /** Use the consistency cache (default true; the reference has none). */
  cache?: boolean;
  /**
   * Reject arguments not in the schema's `properties`. Default: the tool's own `function.strict`, else
   * true (the reference's default when the raw schema has no `strict` field).
   */
  strict?: boolean;
  /** Sampling for simulation requests; absent fields use the simulator role's defaults. */
  sampling?: Sampling;
}

/** One recorded tool call of the reference dialogue. */
export interface RecordedToolCall {
  tool: string;
  args: Record<string, unknown>;
  canonicalArgs: string;
  /** The recorded tool message content. */
  content: string;
  /** 0-based user turn in which the call was made. */
  turn: number;
}

/** Everything the simulator needs about one record; plain JSON. */
export interface ToolIndex {
  uuid: string;
  tools: Record<string, ToolSchema>;
  recorded: RecordedToolCall[];
  options: { replayScope: ReplayScope; cache: boolean; strict: boolean | null; sampling: Sampling };
}

/** One tool call waiting for its result. */
export interface PendingCall {
  /** Position of the call within its assistant step. */
  index: number;
  id: string;
  name: string;
  arguments: Record<string, unknown>;
  /** 0-based user turn of the episode in which the call was made. */
  turn: number;
}

/** The consistency cache: simulated output by (tool, canonical arguments). Plain JSON. */
export interface SimulatorCache {
  entries: Record<string, string>;
}

/** Why a call got an error result. */
export type ToolErrorCode = "unknown-tool" | "schema";

/** What {@linkcode resolveToolCall} decided. */
export type ToolResolution =
  | { kind: "replay"; content: string }
  | { kind: "cached"; content: string }
  | { kind: "error"; code: ToolErrorCode; content: string }
  | { kind: "simulate"; request: ChatRequest };

/** A new, empty consistency cache. */
export function emptyCache(): SimulatorCache {
  return { entries: {} };
}

/**
 * Index a record's tools and recorded calls. Call k of an assistant message is paired with the k-th
 * message after it, which must be a tool message (a record that breaks this throws, as the reference
 * asserts).
 */
export function buildToolIndex(
  record: { uuid: string; tools: readonly ToolSchema[]; messages: readonly Message[] },
  opts: SimulatorOptions = {},
): ToolIndex {
  const tools: Record<string, ToolSchema> = {};
  for (const t of record.tools) tools[t.function.name] = t;
  const recorded: RecordedToolCall[] = [];
  let turn = -1;
  record.messages.forEach((m, i) => {
    if (m.role === "user") turn++;
    if (m.role !== "assistant") return;
    m.tool_calls.forEach((call, k) => {
      const answer = record.messages[i + 1 + k];
      if (!answer || answer.role !== "tool") {
        throw new Error(
          `Record ${record.uuid}: tool call ${k} of messages[${i}] has no tool message after it`,
        );
      }
      let args: unknown;
      try {
        args = JSON.parse(call.function.arguments);
      } catch {
        throw new Error(`Record ${record.uuid}: arguments of tool call ${k} of messages[${i}] are not JSON`);
      }
      if (!isJsonObject(args)) {
        throw new Error(
          `Record ${record.uuid}: arguments of tool call ${k} of messages[${i}] are not an object`,
        );
      }
      recorded.push({
        tool: call.function.name,
        args,
        canonicalArgs: canonicalJson(args),
        content: answer.content,
        turn: Math.max(turn, 0),
      });
    });
  });
  return {
    uuid: record.uuid,
    tools,
    recorded,
    options: {
      replayScope: opts.replayScope ?? "all-turns",
      cache: opts.cache ?? true,
      strict: opts.strict ?? null,
      sampling: opts.sampling ?? {},
    },
  };
}

/** The cache key of a call: canonical JSON of `[tool, arguments]`. */
export function cacheKey(name: string, args: Record<string, unknown>): string {
  return canonicalJson([name, args]);
}

/** A copy of `cache` with one more entry (the input is not changed). */
export function cachePut(
  cache: SimulatorCache,
  call: Pick<PendingCall, "name" | "arguments">,
  content: string,
): SimulatorCache {
  return { entries: { ...cache.entries, [cacheKey(call.name, call.arguments)]: content } };
}

/**
 * Decide what one call returns, or ask for an LLM simulation. See the module doc for the order of checks.
 *
 * @example
 * ```ts
 * const r = resolveToolCall(index, call, cache);
 * if (r.kind === "simulate") {
 *   const parsed = parseSimulation(await simulator.complete(r.request)); // { ok, content } | { ok: false, error }
 *   if (parsed.ok) cache = cachePut(cache, call, parsed.content);
 * }
 * ```
 */
export function resolveToolCall(index: ToolIndex, call: PendingCall, cache: SimulatorCache): ToolResolution {
  const tool = index.tools[call.name];
  if (tool === undefined) {
    return {
      kind: "error",
      code: "unknown-tool",
      content: pyJson({
        error_tool_call:
          `There is no tool named '${call.name}'. Check the call and use only the tools provided.`,
      }),
    };
  }
  const canonical = canonicalJson(call.arguments);
  const hit = visibleRecords(index, call.turn).find((r) =>
    r.tool === call.name && r.canonicalArgs === canonical
  );
  if (hit) return { kind: "replay", content: stripLoneSurrogates(hit.content) };

  const strict = index.options.strict ?? tool.function.strict ?? true;
  const errors = validateArguments(tool.function.parameters, call.arguments, strict);
  if (errors.length > 0) {
    return {
      kind: "error",
      code: "schema",
      content: pyJson({
        error_tool_call: {
          code: "SCHEMA_VALIDATION_FAILED",
          message: "The arguments do not match the tool's schema",
          details: { errors, tool: call.name, original_index: index.uuid },
        },
      }),
    };
  }
  if (index.options.cache) {
    const cached = cache.entries[cacheKey(call.name, call.arguments)];
    if (cached !== undefined) return { kind: "cached", content: cached };
  }
  return { kind: "simulate", request: simulationRequest(index, call) };
}

function visibleRecords(index: ToolIndex, turn: number): RecordedToolCall[] {
  return index.options.replayScope === "all-turns"
    ? index.recorded
    : index.recorded.filter((r) => r.turn <= turn);
}

/**
 * The reference's shallow validation (§3.3 step 3), top level only: every `required` key present; with
 * `strict`, no key outside `properties`; each provided key's primitive `type` (a list passes when any
 * member matches; unknown type names pass; `integer` is any integral number, so `1.0` passes); `enum`
 * membership (by canonical JSON). Returns one message per problem.
 */
export function validateArguments(
  parameters: Record<string, unknown>,
  args: Record<string, unknown>,
  strict: boolean,
): string[] {
  const errors: string[] = [];
  const props = isJsonObject(parameters.properties) ? parameters.properties : {};
  const required = Array.isArray(parameters.required) ? parameters.required : [];
  for (const key of required) {
    if (typeof key === "string" && !(key in args)) errors.push(`Missing required argument '${key}'`);
  }
  for (const [key, value] of Object.entries(args)) {
    const spec = props[key];
    if (!isJsonObject(spec)) {
      if (strict) errors.push(`Unexpected argument '${key}'`);
      continue;
    }
    const types = typeof spec.type === "string" ? [spec.type] : Array.isArray(spec.type) ? spec.type : [];
    if (types.length > 0 && !types.some((t) => typeof t !== "string" || matchesType(t, value))) {
      errors.push(`Argument '${key}' should be of type ${types.join(" | ")}, got ${jsonTypeOf(value)}`);
    }
    if (Array.isArray(spec.enum)) {
      const allowed = spec.enum.map((e) => canonicalJson(e));
      if (!allowed.includes(canonicalJson(value))) {
        errors.push(`Argument '${key}' must be one of ${pyJson(spec.enum)}, got ${pyJson(value)}`);
      }
    }
  }
  return errors;
}

function matchesType(type: string, value: unknown): boolean {
  switch (type) {
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "boolean":
      return typeof value === "boolean";
    case "null":
      return value === null;
    case "object":
      return isJsonObject(value);
    case "array":
      return Array.isArray(value);
    default:
      return true;
  }
}

function jsonTypeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

/** JSON schema of the simulator's answer (name `tool_execution_response`). */
export const SIMULATION_SCHEMA: Record<string, unknown> = {
  type: "object",
  properties: {
    analysis: { type: "string" },
    execution_result: {
      anyOf: [
        { type: "object", minProperties: 1, additionalProperties: true },
        { type: "array" },
      ],
    },
  },
  required: ["analysis", "execution_result"],
  additionalProperties: false,
};

/** System prompt of the tool simulator (own wording; same content as the reference, §3.3 step 4). */
export const SIMULATOR_SYSTEM_PROMPT = [
  "You stand in for real software tools. Given a tool's name, its input schema and the arguments of a call,",
  "you produce exactly the output that the real tool would return for that call.",
  "",
  "Learn from the examples: earlier calls of the tools in this conversation are listed with their real",
  "results. Reuse their style, field names, identifiers and values, and keep your output consistent with",
  "them. Give a plausible, specific result that fits the arguments; when the arguments cannot work",
  "(for example an unknown id), return the kind of error the tool itself would return.",
  "",
  "Think briefly about what the tool would do, then answer with one JSON object and nothing else:",
  '{"analysis": str, "execution_result": JSON array or object}',
].join("\n");

/** The user prompt of one simulation: recorded I/O pairs as examples, then the current call. */
export function simulationPrompt(
  index: ToolIndex,
  call: Pick<PendingCall, "name" | "arguments" | "turn">,
): string {
  const examples = visibleRecords(index, call.turn).map((r) =>
    `Tool name:\n${r.tool}\nTool arguments:\n${
      pyJson(r.args, { indent: 0 })
    }\nTool execution result:\n${r.content}\n`
  );
  const tool = index.tools[call.name];
  return [
    "Earlier calls in this conversation and their real results (examples):",
    ...examples,
  ].join("\n") +
    `\n\nTool to run now: ${call.name}\n` +
    `Its input schema (JSON Schema):\n${pyJson(tool ?? null, { indent: 0 })}\n` +
    `Arguments of this call (JSON):\n${pyJson(call.arguments, { indent: 0 })}\n` +
    "Return the tool's execution result as JSON.";
}

/** The LLM request that simulates one call. */
export function simulationRequest(index: ToolIndex, call: PendingCall): ChatRequest {
  const req: ChatRequest = {
    messages: [
      { role: "system", content: SIMULATOR_SYSTEM_PROMPT },
      { role: "user", content: simulationPrompt(index, call) },
    ],
    jsonSchema: { name: "tool_execution_response", schema: SIMULATION_SCHEMA },
  };
  if (Object.keys(index.options.sampling).length > 0) req.sampling = { ...index.options.sampling };
  return req;
}

/** Outcome of {@linkcode parseSimulation}. */
export type SimulationParse = { ok: true; content: string } | { ok: false; error: string };

/**
 * Read the simulator's answer: a JSON object whose `execution_result` is a non-empty object or an array
 * (fences and text around the JSON are tolerated). The tool output is `execution_result` serialised as
 * Python's `json.dumps` would (ASCII-escaped). Anything else is a simulator failure, never a tool output.
 */
export function parseSimulation(result: Pick<ChatResult, "content" | "finishReason">): SimulationParse {
  const parsed = extractJsonObject(result.content);
  const truncated = result.finishReason === "length" ? " (the answer was cut by the token limit)" : "";
  if (parsed === undefined) return { ok: false, error: `Simulator answer is not a JSON object${truncated}` };
  const out = parsed.execution_result;
  if (Array.isArray(out) || (isJsonObject(out) && Object.keys(out).length > 0)) {
    return { ok: true, content: pyJson(out) };
  }
  return { ok: false, error: `Simulator answer has no execution_result object or array${truncated}` };
}

/**
 * The first JSON object found in model text: the whole text, a fenced block, or the slice from the first
 * `{` to the last `}` (after removing any `<think>` block).
 */
export function extractJsonObject(text: string): Record<string, unknown> | undefined {
  const candidates: string[] = [];
  for (const src of [text, text.replace(/<think>[\s\S]*?<\/think>/g, "")]) {
    const t = src.trim();
    candidates.push(t);
    for (const m of t.matchAll(/```[a-zA-Z0-9_-]*[ \t]*\r?\n?([\s\S]*?)```/g)) candidates.push(m[1]!.trim());
    const a = t.indexOf("{");
    const b = t.lastIndexOf("}");
    if (a >= 0 && b > a) candidates.push(t.slice(a, b + 1));
  }
  for (const c of candidates) {
    try {
      const v: unknown = JSON.parse(c);
      if (isJsonObject(v)) return v;
    } catch {
      // next candidate
    }
  }
  return undefined;
}
