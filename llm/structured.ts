/**
 * Structured output: one model call whose answer must be JSON matching a zod schema. Where the endpoint
 * supports it the schema is sent as a `json_schema` response format; the reply is then extracted
 * robustly (fences, surrounding prose, `<think>` blocks) and validated with zod. Failures are typed:
 * `SchemaViolation` (not JSON, or JSON that does not validate) and `Truncated` (`finish_reason: "length"`
 * with no valid JSON).
 *
 * @example Ask the judge for a verdict
 * ```ts
 * const Verdict = z.object({ reasoning: z.string(), answer: z.boolean() });
 * const { value } = await completeJson(judge, { messages }, Verdict, { name: "evaluation_verdict" });
 * ```
 *
 * @module
 */
import { z } from "zod";
import { type ChatModel, type ChatRequest, type ChatResult, LlmError } from "../core/llm_types.ts";

/**
 * How an endpoint is asked for JSON: `schema` sends a `json_schema` response format (vLLM, SGLang,
 * llama.cpp, OpenAI); `object` sends `json_object`; `none` relies on the prompt alone.
 */
export type JsonMode = "schema" | "object" | "none";

/** Options of {@linkcode completeJson}. */
export interface CompleteJsonOptions {
  /** Name of the response format (`json_schema.name`); also used in error messages. */
  name: string;
  /** The endpoint's JSON capability; defaults to `schema`. */
  jsonMode?: JsonMode;
}

/** The validated value and the raw result it came from (for usage and policy version). */
export interface JsonCompletion<T> {
  value: T;
  result: ChatResult;
}

/**
 * Make one call and return its answer parsed and validated by `schema`. Throws {@linkcode LlmError}:
 * whatever {@linkcode ChatModel.complete} throws, `Truncated` when the answer was cut by the token
 * limit and holds no valid JSON, `SchemaViolation` otherwise when no valid JSON can be extracted.
 * The request's messages are sent unchanged: the prompt itself must describe the expected JSON.
 */
export async function completeJson<S extends z.ZodType>(
  model: ChatModel,
  req: ChatRequest,
  schema: S,
  opts: CompleteJsonOptions,
): Promise<JsonCompletion<z.output<S>>> {
  const mode = opts.jsonMode ?? "schema";
  const request: ChatRequest = { ...req };
  delete request.jsonSchema;
  delete request.jsonObject;
  if (mode === "schema") request.jsonSchema = { name: opts.name, schema: jsonSchemaOf(schema) };
  else if (mode === "object") request.jsonObject = true;
  const result = await model.complete(request);
  const value = parseStructured(result.content, schema, {
    name: opts.name,
    truncated: result.finishReason === "length",
  });
  return { value, result };
}

/**
 * The JSON Schema of a zod schema as endpoints take it in `json_schema.schema` (draft 2020-12, without
 * the `$schema` key). For OpenAI's strict mode every property must be required: avoid `.optional()`.
 */
export function jsonSchemaOf(schema: z.ZodType): Record<string, unknown> {
  const js = z.toJSONSchema(schema) as Record<string, unknown>;
  delete js.$schema;
  return js;
}

/**
 * Extract and validate a JSON value from model text. Candidates, in order: the whole text, the text
 * without a surrounding ``` fence, each fenced block, the slice from the first `{` to the last `}`,
 * and from the first `[` to the last `]` (each also tried after removing `<think>…</think>`). The first
 * candidate that parses and validates wins.
 */
export function parseStructured<S extends z.ZodType>(
  text: string,
  schema: S,
  opts: { name: string; truncated?: boolean },
): z.output<S> {
  let firstIssue: string | undefined;
  for (const candidate of jsonCandidates(text)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(candidate);
    } catch {
      continue;
    }
    const checked = schema.safeParse(parsed);
    if (checked.success) return checked.data;
    firstIssue ??= describeIssues(checked.error, parsed);
  }
  if (opts.truncated) {
    throw new LlmError(
      "Truncated",
      `Structured output ${opts.name} was cut by the token limit (${text.length} chars) before valid JSON ended`,
    );
  }
  if (firstIssue !== undefined) {
    throw new LlmError(
      "SchemaViolation",
      `Structured output ${opts.name} does not match its schema: ${firstIssue}`,
    );
  }
  throw new LlmError(
    "SchemaViolation",
    `Structured output ${opts.name} is not JSON: ${JSON.stringify(preview(text))}`,
  );
}

const FENCE_RE = /```[a-zA-Z0-9_-]*[ \t]*\r?\n?([\s\S]*?)```/g;
const THINK_RE = /<think>[\s\S]*?<\/think>/g;

/** Candidate JSON substrings of `text`, most literal first, without duplicates. */
export function jsonCandidates(text: string): string[] {
  const out: string[] = [];
  const add = (s: string | undefined) => {
    const t = s?.trim();
    if (t && !out.includes(t)) out.push(t);
  };
  const sources = [text];
  const unthought = text.replace(THINK_RE, "");
  if (unthought !== text) sources.push(unthought);
  for (const src of sources) {
    const trimmed = src.trim();
    add(trimmed);
    const whole = /^```[a-zA-Z0-9_-]*[ \t]*\r?\n?([\s\S]*?)\r?\n?```$/.exec(trimmed);
    add(whole?.[1]);
    for (const m of trimmed.matchAll(FENCE_RE)) add(m[1]);
    add(sliceBetween(trimmed, "{", "}"));
    add(sliceBetween(trimmed, "[", "]"));
  }
  return out;
}

function sliceBetween(s: string, open: string, close: string): string | undefined {
  const start = s.indexOf(open);
  const end = s.lastIndexOf(close);
  return start >= 0 && end > start ? s.slice(start, end + 1) : undefined;
}

function describeIssues(error: z.ZodError, input: unknown): string {
  const shown = error.issues.slice(0, MAX_ISSUES).map((issue) => {
    const path = issue.path.length > 0 ? issue.path.map(String).join(".") : "(root)";
    const value = valueAt(input, issue.path);
    const what = value === undefined ? "is missing" : `is ${showValue(value)}`;
    return `field ${path} ${what} (${issue.message})`;
  });
  const more = error.issues.length - shown.length;
  return shown.join("; ") + (more > 0 ? `; and ${more} more` : "");
}

const MAX_ISSUES = 5;

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur = input;
  for (const key of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function showValue(value: unknown): string {
  return typeof value === "string"
    ? JSON.stringify(preview(value))
    : preview(JSON.stringify(value) ?? String(value));
}

function preview(s: string, max = 120): string {
  return s.length <= max ? s : `${s.slice(0, max)}…`;
}
