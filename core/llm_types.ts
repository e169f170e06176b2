/**
 * The model-call contract shared by `llm/` (which implements it over any OpenAI-compatible endpoint)
 * and `core/` (which builds requests and interprets results). Pure types, no I/O.
 *
 * @module
 */

/** The four model roles of a run. */
export type Role = "policy" | "judge" | "simulator" | "labeler";

/** One OpenAI-format tool call as it appears on an assistant message. */
export interface ChatToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** One OpenAI-format chat message. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
}

/** An OpenAI-format tool definition. */
export interface ChatTool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

/** Sampling settings for one request; absent fields use the role's configured defaults. */
export interface Sampling {
  temperature?: number;
  top_p?: number;
  max_tokens?: number;
  seed?: number;
}

/** A request for one chat completion. */
export interface ChatRequest {
  messages: ChatMessage[];
  tools?: ChatTool[];
  sampling?: Sampling;
  /** Ask for JSON matching this schema (json_schema response format where supported). */
  jsonSchema?: { name: string; schema: Record<string, unknown> };
  /**
   * Ask for any JSON object (json_object response format), for endpoints without schema support;
   * ignored when `jsonSchema` is set.
   */
  jsonObject?: boolean;
  /** Ask the server for token ids / logprobs of the completion where it can return them. */
  wantTokens?: boolean;
  /**
   * Stable id of this logical call (sent as `Idempotency-Key`): the same across retries of one
   * activity, so servers and tests can tell a retry from a new call.
   */
  idempotencyKey?: string;
}

/** Token usage and latency of one call. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  latencyMs: number;
}

/** The result of one chat completion. */
export interface ChatResult {
  content: string;
  toolCalls: ChatToolCall[];
  finishReason: "stop" | "length" | "tool_calls" | "content_filter" | "other";
  usage: Usage;
  /** The model (and adapter version, where the server says it) that produced the result. */
  model: string;
  policyVersion?: string;
  /** Token ids and logprobs of the completion, when the server returned them. */
  completion?: { tokenIds: number[]; logprobs?: number[] };
}

/** Closed list of failure types that cross activity boundaries; workflows branch on these. */
export const FAILURE_TYPES = [
  "RateLimited", // 429: retry, honour Retry-After
  "ServerError", // 5xx: retry
  "Timeout", // request timed out: retry
  "Network", // connection refused / reset: retry
  "BadRequest", // other 4xx: do not retry
  "Refusal", // the model refused: do not retry
  "SchemaViolation", // structured output did not validate: do not retry the same call
  "Truncated", // finish_reason length where a complete answer was needed
] as const;

/** A failure type from {@linkcode FAILURE_TYPES}. */
export type FailureType = (typeof FAILURE_TYPES)[number];

/** Failure types that a retry may fix. */
export const RETRYABLE_FAILURES: readonly FailureType[] = [
  "RateLimited",
  "ServerError",
  "Timeout",
  "Network",
];

/** A typed model-call failure. `retryAfterMs` is set when the server sent Retry-After. */
export class LlmError extends Error {
  constructor(
    readonly type: FailureType,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "LlmError";
  }
  /** Whether a retry may succeed. */
  get retryable(): boolean {
    return RETRYABLE_FAILURES.includes(this.type);
  }
}

/** One model endpoint for one role. */
export interface ChatModel {
  readonly role: Role;
  readonly model: string;
  /** Make one call; throws {@linkcode LlmError} on failure. Never retries by itself. */
  complete(req: ChatRequest): Promise<ChatResult>;
}
