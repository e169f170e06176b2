/**
 * Pure mapping between the OpenAI chat-completions wire format and `@fugood/llama.node` completion
 * options/results, used by `serve/llama_server.ts`. No I/O and no native code here, so it is unit-tested
 * without a model.
 *
 * Tool calls: where the model's chat template renders `tools` (llama.cpp reports `tools` in its template
 * caps) they are passed to llama.cpp, which formats and parses them. Templates without tool support (e.g.
 * SmolLM2's ChatML) get the tool descriptions in the system message and the Hermes-style convention the
 * policy server (`trainer/cm2_trainer/serve.py`) also uses: the model answers with
 * `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, which become OpenAI `tool_calls`.
 *
 * @module
 */
import { z } from "zod";

// -- request ----------------------------------------------------------------------------------------------

const TextPart = z.looseObject({ type: z.string(), text: z.string().optional() });

const ToolCallSchema = z.looseObject({
  id: z.string().optional(),
  type: z.literal("function").optional(),
  function: z.looseObject({
    name: z.string(),
    arguments: z.union([z.string(), z.record(z.string(), z.unknown())]),
  }),
});

const MessageSchema = z.looseObject({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(TextPart), z.null()]).optional(),
  tool_calls: z.array(ToolCallSchema).nullish(),
  tool_call_id: z.string().nullish(),
  name: z.string().nullish(),
});

const ToolSchema = z.looseObject({
  type: z.literal("function"),
  function: z.looseObject({
    name: z.string().min(1),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
  }),
});

const ResponseFormatSchema = z.union([
  z.looseObject({ type: z.literal("text") }),
  z.looseObject({ type: z.literal("json_object"), schema: z.record(z.string(), z.unknown()).optional() }),
  z.looseObject({
    type: z.literal("json_schema"),
    json_schema: z.looseObject({
      name: z.string().optional(),
      schema: z.record(z.string(), z.unknown()).optional(),
      strict: z.boolean().nullish(),
    }),
  }),
]);

/**
 * The accepted request body. Unknown fields are ignored (as vLLM and llama.cpp do); `n > 1` and
 * `stream: true` are rejected. `top_k`, `min_p` and `repetition_penalty` are the vLLM sampling
 * extensions; `logprobs`/`return_token_ids` are accepted and ignored (this server returns no token ids).
 */
export const ChatCompletionRequestSchema = z.looseObject({
  model: z.string().optional(),
  messages: z.array(MessageSchema).min(1),
  tools: z.array(ToolSchema).nullish(),
  tool_choice: z.union([
    z.enum(["none", "auto", "required"]),
    z.looseObject({ type: z.literal("function"), function: z.object({ name: z.string() }) }),
  ]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
  seed: z.number().int().nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(16)]).nullish(),
  n: z.literal(1).nullish(),
  stream: z.literal(false).nullish(),
  response_format: ResponseFormatSchema.nullish(),
});

/** A validated request body. */
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

/** A message as handed to the binding's chat formatter (content always a string). */
export interface BindingMessage {
  role: string;
  content: string;
  tool_calls?: { id: string; type: "function"; function: { name: string; arguments: string } }[];
  tool_call_id?: string;
}

/** Completion options handed to `@fugood/llama.node` (the subset this server sets). */
export interface BindingCompletionOptions {
  messages: BindingMessage[];
  jinja: true;
  n_predict: number;
  temperature: number;
  top_p: number;
  top_k: number;
  min_p: number;
  penalty_repeat: number;
  penalty_present: number;
  penalty_freq: number;
  seed?: number;
  stop?: string[];
  response_format?: {
    type: "json_object" | "json_schema";
    json_schema?: { schema: Record<string, unknown> };
  };
  tools?: unknown[];
  tool_choice?: string;
  parallel_tool_calls?: boolean;
}

/** How a request's tools are handled: not at all, by llama.cpp's template support, or by prompt injection. */
export type ToolMode = "none" | "native" | "injected";

/** A request translated for the binding; `maxTokens` is the caller's limit before the context cap. */
export interface PreparedRequest {
  options: Omit<BindingCompletionOptions, "n_predict">;
  maxTokens: number | undefined;
  toolMode: ToolMode;
}

/** A request error that maps to HTTP 400. */
export class BadRequestError extends Error {
  constructor(message: string, readonly param?: string) {
    super(message);
    this.name = "BadRequestError";
  }
}

import { boundStrings } from "../core/json_schema.ts";
export { boundStrings };

/** Server-side sampling defaults (OpenAI semantics: no top-k, no min-p, temperature 1). */
export interface SamplingDefaults {
  temperature: number;
  top_p: number;
  top_k: number;
  min_p: number;
}

/** top_p used instead of 1 under a grammar (see `prepareRequest`). */
export const GRAMMAR_TOP_P = 0.999;

/** OpenAI's defaults. */
export const OPENAI_SAMPLING_DEFAULTS: SamplingDefaults = { temperature: 1, top_p: 1, top_k: 0, min_p: 0 };

/** Parse and validate a request body; throws {@linkcode BadRequestError} naming the first bad field. */
export function parseRequest(body: unknown): ChatCompletionRequest {
  const r = ChatCompletionRequestSchema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const where = issue.path.length ? issue.path.join(".") : "body";
    throw new BadRequestError(`Invalid request field ${where}: ${issue.message}`, where);
  }
  return r.data;
}

function contentText(
  content: string | { type: string; text?: string | undefined }[] | null | undefined,
): string {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.map((p, i) => {
    if (p.type !== "text" || typeof p.text !== "string") {
      throw new BadRequestError(
        `Message content part ${i} has type ${p.type}, only text parts are supported`,
      );
    }
    return p.text;
  }).join("");
}

function argumentsString(args: string | Record<string, unknown>): string {
  return typeof args === "string" ? args : JSON.stringify(args);
}

/** The Hermes-style tool block appended to the system message when the template has no tool support. */
export function toolSystemPrompt(tools: readonly unknown[]): string {
  return "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
    tools.map((t) => JSON.stringify(t)).join("\n") +
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' +
    "</tool_call>";
}

/** System text used when tools are injected into a chat that has no system message. */
const DEFAULT_SYSTEM = "You are a helpful assistant.";

/** An assistant message's tool calls as text in the injected convention. */
export function toolCallsText(calls: readonly { function: { name: string; arguments: string } }[]): string {
  return calls.map((c) => {
    let args: unknown = c.function.arguments;
    try {
      args = JSON.parse(c.function.arguments);
    } catch { /* keep the raw string */ }
    return `<tool_call>\n${JSON.stringify({ name: c.function.name, arguments: args })}\n</tool_call>`;
  }).join("\n");
}

/**
 * Translate a validated request into binding options. `nativeTools` says whether the model's template
 * renders tools itself.
 */
export function prepareRequest(
  req: ChatCompletionRequest,
  opts: { nativeTools: boolean; defaults: SamplingDefaults; jsonMaxString?: number },
): PreparedRequest {
  const tools = req.tools ?? [];
  let choice = req.tool_choice ?? (tools.length ? "auto" : "none");
  if (typeof choice === "object") choice = "required"; // a named function: llama.cpp takes only the mode
  const toolMode: ToolMode = tools.length === 0 || choice === "none"
    ? "none"
    : opts.nativeTools
    ? "native"
    : "injected";

  let messages: BindingMessage[] = req.messages.map((m) => {
    const role = m.role === "developer" ? "system" : m.role;
    const out: BindingMessage = { role, content: contentText(m.content) };
    if (m.role === "assistant" && m.tool_calls?.length) {
      out.tool_calls = m.tool_calls.map((c, i) => ({
        id: c.id ?? `call_${i}`,
        type: "function" as const,
        function: { name: c.function.name, arguments: argumentsString(c.function.arguments) },
      }));
    }
    if (m.role === "tool" && m.tool_call_id) out.tool_call_id = m.tool_call_id;
    return out;
  });

  if (toolMode !== "native") {
    // Templates without tool support drop tool_calls; keep them visible as text.
    messages = messages.map((m) => {
      if (!m.tool_calls) return m;
      const text = toolCallsText(m.tool_calls);
      return { role: m.role, content: m.content ? `${m.content}\n${text}` : text };
    });
  }
  if (toolMode === "injected") {
    const block = toolSystemPrompt(tools);
    const first = messages[0];
    if (first && first.role === "system") {
      messages = [{ ...first, content: `${first.content}\n\n${block}` }, ...messages.slice(1)];
    } else {
      messages = [{ role: "system", content: `${DEFAULT_SYSTEM}\n\n${block}` }, ...messages];
    }
  }

  const d = opts.defaults;
  const options: PreparedRequest["options"] = {
    messages,
    jinja: true,
    temperature: req.temperature ?? d.temperature,
    top_p: req.top_p ?? d.top_p,
    top_k: req.top_k == null || req.top_k < 0 ? d.top_k : req.top_k,
    min_p: req.min_p ?? d.min_p,
    penalty_repeat: req.repetition_penalty ?? 1,
    penalty_present: req.presence_penalty ?? 0,
    penalty_freq: req.frequency_penalty ?? 0,
  };
  if (options.temperature <= 0) {
    // Greedy, as in OpenAI and vLLM. llama.cpp 1.7.15 with temperature 0 but no top-k still samples (seen:
    // different answers to the same prompt), so pin top-k to 1.
    Object.assign(options, { temperature: 0, top_k: 1, top_p: 1, min_p: 0 });
  }
  // llama.cpp takes a uint32 seed; 0xFFFFFFFF means "random", so fold a given seed away from it.
  if (req.seed != null) options.seed = ((req.seed % 0xffffffff) + 0xffffffff) % 0xffffffff;
  if (req.stop != null) options.stop = typeof req.stop === "string" ? [req.stop] : req.stop;
  const rf = req.response_format;
  let schema: Record<string, unknown> | undefined;
  if (rf?.type === "json_schema") schema = rf.json_schema.schema ?? {};
  else if (rf?.type === "json_object") schema = rf.schema ?? { type: "object" }; // an object, not any JSON value
  if (schema) {
    if (opts.jsonMaxString) schema = boundStrings(schema, opts.jsonMaxString) as Record<string, unknown>;
    options.response_format = { type: "json_schema", json_schema: { schema } };
    // @fugood/llama.node 1.7.15: with a grammar and no truncating sampler (top_p 1, min_p 0, top_k 0) the
    // sampler lets a token the grammar rejects through and the completion fails with "Unexpected empty
    // grammar stack" (5 of 8 seeds); any truncation avoided it (8 of 8 each for top_p 0.999, 0.95 and
    // min_p 0.001). Dropping the 0.1% tail is the smallest such change.
    if (options.top_p >= 1 && options.min_p <= 0 && options.top_k !== 1) options.top_p = GRAMMAR_TOP_P;
  }
  if (toolMode === "native") {
    options.tools = tools;
    options.tool_choice = choice;
    options.parallel_tool_calls = req.parallel_tool_calls ?? true;
  }
  return { options, maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined, toolMode };
}

/**
 * The number of tokens to generate: the caller's limit, capped so prompt plus completion fit the slot's
 * context. Throws {@linkcode BadRequestError} when the prompt alone does not leave room for one token.
 */
export function completionBudget(
  promptTokens: number,
  maxTokens: number | undefined,
  slotContext: number,
): number {
  const room = slotContext - promptTokens;
  if (room < 1) {
    throw new BadRequestError(
      `Prompt has ${promptTokens} tokens, the context of a slot is ${slotContext} tokens`,
      "messages",
    );
  }
  return maxTokens === undefined ? room : Math.min(maxTokens, room);
}

// -- tool-call parsing ------------------------------------------------------------------------------------

/** An OpenAI tool call on a response message. */
export interface OpenAIToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

const TOOL_CALL_RE = /<tool_call>\s*([\s\S]*?)\s*(?:<\/tool_call>|$)/g;

/**
 * Split model text into content and tool calls (`<tool_call>{"name", "arguments"}</tool_call>` blocks; a
 * final block cut before its closing tag counts if its JSON is complete). Blocks whose JSON does not
 * parse, or lacks a string `name`, stay in the content. `newId` makes call ids.
 */
export function parseToolCalls(
  text: string,
  newId: () => string,
): { content: string; toolCalls: OpenAIToolCall[] } {
  const toolCalls: OpenAIToolCall[] = [];
  const content = text.replace(TOOL_CALL_RE, (block, body: string) => {
    let obj: unknown;
    try {
      obj = JSON.parse(body);
    } catch {
      return block;
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) return block;
    const { name, arguments: args, parameters } = obj as Record<string, unknown>;
    if (typeof name !== "string" || name === "") return block;
    const a = args ?? parameters ?? {};
    toolCalls.push({
      id: newId(),
      type: "function",
      function: { name, arguments: typeof a === "string" ? a : JSON.stringify(a) },
    });
    return "";
  });
  return { content: toolCalls.length ? content.trim() : content, toolCalls };
}

// -- response ---------------------------------------------------------------------------------------------

/** What the server needs from a binding result (serial and parallel results differ in field names). */
export interface BindingResult {
  text: string;
  content?: string;
  tool_calls?: { id?: string; type?: string; function: { name: string; arguments: string } }[];
  tokens_predicted: number;
  /** Serial results. */
  stopped_limited?: boolean;
  /** Parallel results. */
  stopped_limit?: boolean;
  context_full?: boolean;
  interrupted?: boolean;
}

/** The OpenAI finish reason of a result. */
export type FinishReason = "stop" | "length" | "tool_calls";

/** Build the OpenAI `chat.completion` object of a binding result. */
export function toChatCompletion(
  res: BindingResult,
  ctx: {
    id: string;
    model: string;
    created: number;
    promptTokens: number;
    toolMode: ToolMode;
    newCallId: () => string;
    systemFingerprint?: string;
  },
): Record<string, unknown> {
  let content = res.content ?? res.text;
  let toolCalls: OpenAIToolCall[] = [];
  if (ctx.toolMode === "native" && res.tool_calls?.length) {
    toolCalls = res.tool_calls.map((c) => ({
      id: c.id || ctx.newCallId(),
      type: "function" as const,
      function: { name: c.function.name, arguments: c.function.arguments },
    }));
  } else if (ctx.toolMode === "injected") {
    ({ content, toolCalls } = parseToolCalls(res.text, ctx.newCallId));
  }
  const limited = Boolean(res.stopped_limited || res.stopped_limit || res.context_full);
  const finish: FinishReason = toolCalls.length ? "tool_calls" : limited ? "length" : "stop";
  const message: Record<string, unknown> = {
    role: "assistant",
    content: toolCalls.length && content === "" ? null : content,
  };
  if (toolCalls.length) message.tool_calls = toolCalls;
  return {
    id: ctx.id,
    object: "chat.completion",
    created: ctx.created,
    model: ctx.model,
    system_fingerprint: ctx.systemFingerprint ?? null,
    choices: [{ index: 0, message, logprobs: null, finish_reason: finish }],
    usage: {
      prompt_tokens: ctx.promptTokens,
      completion_tokens: res.tokens_predicted,
      total_tokens: ctx.promptTokens + res.tokens_predicted,
    },
  };
}

/** An OpenAI-shaped error body. */
export function errorBody(
  message: string,
  type: string,
  param?: string,
  code?: string,
): Record<string, unknown> {
  return { error: { message, type, param: param ?? null, code: code ?? null } };
}
