/**
 * The one model-call path: a {@linkcode ChatModel} over any OpenAI-compatible `/v1/chat/completions`
 * endpoint (vLLM, SGLang, llama.cpp, OpenAI), built on the `openai` package with `maxRetries: 0`
 * (Temporal owns retries) and an explicit timeout. Every failure becomes an {@linkcode LlmError} with a
 * type from the closed list in `core/llm_types.ts`.
 *
 * Only node-compatible APIs and `fetch` are used here, so the module runs under Deno and Node alike.
 *
 * @example Call a local endpoint
 * ```ts
 * const judge = createChatModel({
 *   role: "judge",
 *   baseURL: "http://127.0.0.1:8000/v1",
 *   model: "Qwen/Qwen3-4B-Instruct-2507",
 *   timeoutMs: 120_000,
 *   defaults: { temperature: 0.6, top_p: 0.8 },
 * });
 * const result = await judge.complete({ messages: [{ role: "user", content: "Hi" }] });
 * ```
 *
 * @module
 */
import OpenAI from "openai";
import type {
  ChatCompletion,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageParam,
} from "openai/resources/chat/completions";
import {
  type ChatMessage,
  type ChatModel,
  type ChatRequest,
  type ChatResult,
  type ChatToolCall,
  LlmError,
  type Role,
  type Sampling,
} from "../core/llm_types.ts";
import { redactKeyLike, redactSecret } from "../core/redact.ts";
import { boundStrings } from "../core/json_schema.ts";

/** Response header through which a serving stack names the policy (adapter) version it answered with. */
export const POLICY_VERSION_HEADER = "x-cm2-policy-version";

/** Options of {@linkcode createChatModel}. */
export interface ChatModelOptions {
  role: Role;
  /** Base URL of the OpenAI-compatible API, including `/v1`. */
  baseURL: string;
  model: string;
  /**
   * The API key, read by the caller from the environment variable the run config names. Absent for
   * local servers that need none; it is never logged and never falls back to `OPENAI_API_KEY`.
   */
  apiKey?: string;
  /** Per-request timeout in milliseconds; past it the call fails with type `Timeout`. */
  timeoutMs: number;
  /** Sampling used where a request does not set a field. */
  defaults: Sampling;
  /** Headers sent with every request (e.g. a routing header of a gateway). */
  extraHeaders?: Record<string, string>;
  /**
   * vLLM extension: when a request sets `wantTokens`, also send `return_token_ids: true` and
   * `return_tokens_as_token_ids: true` so the completion's token ids come back. Off by default because
   * strict servers (OpenAI) reject unknown request fields.
   */
  returnTokenIds?: boolean;
  /**
   * Give every JSON-schema string without `maxLength` this one (for small local models under a
   * grammar, which otherwise fill a string until the token limit cuts the JSON). Unset: schemas as given.
   */
  jsonMaxString?: number;
}

/** Placeholder key for endpoints that need none; the SDK requires some key. */
const NO_KEY = "no-key";

/**
 * Build the {@linkcode ChatModel} of one role. The returned model makes exactly one HTTP request per
 * {@linkcode ChatModel.complete} call and throws {@linkcode LlmError} on any failure.
 */
export function createChatModel(opts: ChatModelOptions): ChatModel {
  const client = new OpenAI({
    baseURL: opts.baseURL,
    apiKey: opts.apiKey ?? NO_KEY,
    // Explicit nulls so the SDK does not pick these up from the environment.
    organization: null,
    project: null,
    maxRetries: 0,
    timeout: opts.timeoutMs,
    ...(opts.extraHeaders ? { defaultHeaders: opts.extraHeaders } : {}),
  });
  const { role, model } = opts;

  async function complete(req: ChatRequest): Promise<ChatResult> {
    const body = buildRequestBody(
      model,
      opts.defaults,
      req,
      opts.returnTokenIds ?? false,
      opts.jsonMaxString,
    );
    const started = performance.now();
    let completion: ChatCompletion;
    let headers: Headers;
    try {
      const options = req.idempotencyKey ? { headers: { "Idempotency-Key": req.idempotencyKey } } : undefined;
      const { data, response } = await client.chat.completions.create(body, options).withResponse();
      completion = data;
      headers = response.headers;
    } catch (err) {
      const e = classifyError(err, Date.now());
      // The message becomes an activity failure in the history: no fragment of the key may survive in it.
      e.message = redactKeyLike(redactSecret(e.message, opts.apiKey));
      throw e;
    }
    const latencyMs = performance.now() - started;
    return mapCompletion(completion, headers, { model, latencyMs });
  }

  return { role, model, complete };
}

/**
 * Turn a {@linkcode ChatRequest} into the JSON body of `POST /chat/completions`. Tools are sent only
 * when there are some; sampling fields of the request override the role's defaults.
 */
export function buildRequestBody(
  model: string,
  defaults: Sampling,
  req: ChatRequest,
  returnTokenIds = false,
  jsonMaxString?: number,
): ChatCompletionCreateParamsNonStreaming {
  const sampling: Sampling = { ...defaults, ...req.sampling };
  const body: ChatCompletionCreateParamsNonStreaming & Record<string, unknown> = {
    model,
    messages: req.messages.map(toMessageParam),
  };
  if (req.tools && req.tools.length > 0) body.tools = req.tools;
  if (sampling.temperature !== undefined) body.temperature = sampling.temperature;
  if (sampling.top_p !== undefined) body.top_p = sampling.top_p;
  if (sampling.max_tokens !== undefined) body.max_tokens = sampling.max_tokens;
  if (sampling.seed !== undefined) body.seed = sampling.seed;
  if (req.jsonSchema) {
    body.response_format = {
      type: "json_schema",
      json_schema: {
        name: req.jsonSchema.name,
        schema: jsonMaxString
          ? boundStrings(req.jsonSchema.schema, jsonMaxString) as Record<string, unknown>
          : req.jsonSchema.schema,
        strict: true,
      },
    };
  } else if (req.jsonObject) {
    body.response_format = { type: "json_object" };
  }
  if (req.wantTokens) {
    body.logprobs = true;
    if (returnTokenIds) {
      body.return_token_ids = true;
      body.return_tokens_as_token_ids = true;
    }
  }
  return body;
}

function toMessageParam(m: ChatMessage, index: number): ChatCompletionMessageParam {
  switch (m.role) {
    case "system":
      return { role: "system", content: m.content };
    case "user":
      return { role: "user", content: m.content };
    case "assistant":
      if (m.tool_calls && m.tool_calls.length > 0) {
        return { role: "assistant", content: m.content === "" ? null : m.content, tool_calls: m.tool_calls };
      }
      return { role: "assistant", content: m.content };
    case "tool":
      if (m.tool_call_id === undefined) {
        throw new LlmError("BadRequest", `Tool message at index ${index} has no tool_call_id`);
      }
      return { role: "tool", content: m.content, tool_call_id: m.tool_call_id };
  }
}

/**
 * Map a chat completion to a {@linkcode ChatResult}. Throws `Refusal` when the model refused
 * (`message.refusal` set, or `finish_reason: "content_filter"`), and `ServerError` when the response
 * has no choice.
 *
 * Token ids are best-effort: vLLM's `choices[0].token_ids` (sent when `return_token_ids` was asked),
 * else logprob tokens of the form `token_id:<n>` (vLLM's `return_tokens_as_token_ids`). Logprobs come
 * from `choices[0].logprobs.content`. Without ids, `completion` is absent.
 */
export function mapCompletion(
  completion: ChatCompletion,
  headers: Headers,
  ctx: { model: string; latencyMs: number },
): ChatResult {
  const choice = completion.choices?.[0];
  if (!choice) throw new LlmError("ServerError", `Response of model ${ctx.model} has no choices`);
  const message = choice.message;
  if (message.refusal) {
    throw new LlmError("Refusal", `Model ${ctx.model} refused: ${truncate(message.refusal, 200)}`);
  }
  if (choice.finish_reason === "content_filter") {
    throw new LlmError("Refusal", `Model ${ctx.model} output was stopped by its content filter`);
  }
  const toolCalls: ChatToolCall[] = [];
  for (const call of message.tool_calls ?? []) {
    if (call.type !== "function") continue;
    toolCalls.push({
      id: call.id,
      type: "function",
      function: { name: call.function.name, arguments: call.function.arguments },
    });
  }
  const result: ChatResult = {
    content: message.content ?? "",
    toolCalls,
    finishReason: mapFinishReason(choice.finish_reason),
    usage: {
      promptTokens: completion.usage?.prompt_tokens ?? 0,
      completionTokens: completion.usage?.completion_tokens ?? 0,
      latencyMs: ctx.latencyMs,
    },
    model: completion.model || ctx.model,
  };
  const policyVersion = headers.get(POLICY_VERSION_HEADER) ?? completion.system_fingerprint ?? undefined;
  if (policyVersion) result.policyVersion = policyVersion;
  const tokens = extractTokens(choice);
  if (tokens) result.completion = tokens;
  return result;
}

function mapFinishReason(reason: string | null | undefined): ChatResult["finishReason"] {
  switch (reason) {
    case "stop":
    case "length":
    case "tool_calls":
    case "content_filter":
      return reason;
    case "function_call":
      return "tool_calls";
    default:
      return "other";
  }
}

const TOKEN_ID_PREFIX = "token_id:";

function extractTokens(choice: ChatCompletion.Choice): ChatResult["completion"] | undefined {
  const lp = choice.logprobs?.content ?? null;
  const logprobs = lp?.map((t) => t.logprob);
  const raw = (choice as unknown as { token_ids?: unknown }).token_ids;
  let tokenIds: number[] | undefined;
  if (Array.isArray(raw) && raw.every((x) => Number.isInteger(x))) {
    tokenIds = raw as number[];
  } else if (lp && lp.length > 0 && lp.every((t) => t.token.startsWith(TOKEN_ID_PREFIX))) {
    tokenIds = lp.map((t) => Number(t.token.slice(TOKEN_ID_PREFIX.length)));
    if (!tokenIds.every(Number.isInteger)) tokenIds = undefined;
  }
  if (!tokenIds) return undefined;
  return logprobs && logprobs.length === tokenIds.length ? { tokenIds, logprobs } : { tokenIds };
}

/**
 * Classify anything the SDK threw as an {@linkcode LlmError}: 429 → `RateLimited` (with
 * `retryAfterMs` from `retry-after-ms` or `Retry-After`), 408 and timeouts → `Timeout`, 5xx →
 * `ServerError`, connection failures → `Network`, other 4xx → `BadRequest`. An existing
 * {@linkcode LlmError} passes through. Anything else (e.g. an unparsable response body) is a
 * `ServerError`.
 */
export function classifyError(err: unknown, nowMs: number): LlmError {
  if (err instanceof LlmError) return err;
  if (err instanceof OpenAI.APIConnectionTimeoutError) {
    return new LlmError("Timeout", "Request timed out");
  }
  if (err instanceof OpenAI.APIUserAbortError) {
    return new LlmError("Network", "Request was aborted");
  }
  if (err instanceof OpenAI.APIConnectionError) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : "";
    return new LlmError("Network", `Connection failed${cause}`);
  }
  if (err instanceof OpenAI.APIError && typeof err.status === "number") {
    const status = err.status;
    const detail = truncate(err.message, 300);
    if (status === 429) {
      const retryAfterMs = err.headers ? parseRetryAfter(err.headers, nowMs) : undefined;
      return new LlmError("RateLimited", `Rate limited (HTTP 429): ${detail}`, retryAfterMs);
    }
    if (status === 408) return new LlmError("Timeout", `Server timed out (HTTP 408): ${detail}`);
    if (status >= 500) return new LlmError("ServerError", `Server error (HTTP ${status}): ${detail}`);
    return new LlmError("BadRequest", `Request rejected (HTTP ${status}): ${detail}`);
  }
  const message = err instanceof Error ? err.message : String(err);
  return new LlmError("ServerError", `Unexpected failure of the model call: ${truncate(message, 300)}`);
}

/**
 * Milliseconds to wait according to `retry-after-ms` (milliseconds) or `Retry-After` (seconds, or an
 * HTTP date relative to `nowMs`); `undefined` when neither is present or parsable.
 */
export function parseRetryAfter(headers: Headers, nowMs: number): number | undefined {
  const ms = headers.get("retry-after-ms");
  if (ms !== null && ms.trim() !== "") {
    const n = Number(ms);
    if (Number.isFinite(n) && n >= 0) return Math.round(n);
  }
  const ra = headers.get("retry-after");
  if (ra === null || ra.trim() === "") return undefined;
  const seconds = Number(ra);
  if (Number.isFinite(seconds)) return seconds >= 0 ? Math.round(seconds * 1000) : undefined;
  const date = Date.parse(ra);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - nowMs);
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max)}…`;
}
