/**
 * TEST DOUBLE — a scripted OpenAI-compatible model server for tests and benchmarks. Not a model: every
 * reply comes from a script.
 *
 * It is a real HTTP server on 127.0.0.1 (an ephemeral port) serving `POST /v1/chat/completions` and
 * `GET /v1/models`. A handler `(req, callIndex) => reply` decides each reply; one server can play
 * several roles by routing on the request's `model` field. Faults (429 with Retry-After, 500, a hang
 * past the client's timeout, truncated or malformed JSON, refusals) are scripted the same way. Every
 * call is recorded for assertions.
 *
 * @example One server for policy and judge
 * ```ts
 * const server = startScriptedServer({
 *   roles: {
 *     "policy-model": scriptFromQueue([{ toolCalls: [{ name: "search", arguments: { q: "x" } }] }, { content: "Done" }]),
 *     "judge-model": judgeAlways(true),
 *   },
 *   latencyMs: 100,
 * });
 * try {
 *   // point clients at server.url (it ends in /v1)
 * } finally {
 *   await server.close();
 * }
 * ```
 *
 * @module
 */
import { createHash } from "node:crypto";

/** A short digest of a request's model and messages (stable across runs). */
function requestDigest(req: ParsedChatRequest): string {
  return createHash("sha256").update(req.model).update(JSON.stringify(req.messages)).digest("hex").slice(
    0,
    12,
  );
}

/** A chat-completions request as the server received it. */
export interface ParsedChatRequest {
  model: string;
  messages: Array<Record<string, unknown> & { role: string; content?: unknown }>;
  tools?: unknown[];
  response_format?: unknown;
  /** The whole JSON body. */
  body: Record<string, unknown>;
  headers: Record<string, string>;
}

/** One scripted tool call; object arguments are JSON-encoded. */
export interface ScriptedToolCall {
  name: string;
  arguments: string | Record<string, unknown>;
  id?: string;
}

/** Fields any successful reply may carry. */
export interface ReplyExtras {
  /** Override the usage the server reports (by default about 4 characters per token). */
  usage?: { promptTokens: number; completionTokens: number };
  /** Completion token ids, returned as vLLM's `choices[0].token_ids`. */
  tokenIds?: number[];
  /** Override `finish_reason`. */
  finishReason?: "stop" | "length" | "tool_calls" | "content_filter";
}

/** What the server answers to one call. */
export type ScriptedReply =
  | ({ content: string } & ReplyExtras)
  | ({ toolCalls: ScriptedToolCall[]; content?: string } & ReplyExtras)
  | ({ json: unknown } & ReplyExtras)
  | { fault: "429"; retryAfterS?: number; retryAfterMs?: number; retryAfter?: string }
  | { fault: "500"; status?: number; message?: string }
  | { fault: "timeout"; delayMs: number }
  | { fault: "truncated-json"; json?: unknown }
  | { fault: "malformed-json"; content?: string }
  | { fault: "refusal"; via?: "refusal" | "content_filter" }
  /** HTTP 200 whose body is this text (cut or not JSON): the client cannot read a completion from it. */
  | { fault: "body"; body: string }
  /** The connection breaks while the body is sent: the client sees a network error. */
  | { fault: "reset" };

/** Decides the reply to a call; `callIndex` counts the calls this handler has seen, from 0. */
export type ScriptHandler = (
  req: ParsedChatRequest,
  callIndex: number,
) => ScriptedReply | Promise<ScriptedReply>;

/** One recorded call. */
export interface RecordedCall {
  /** Position among all calls to the server, from 0. */
  index: number;
  model: string;
  messages: ParsedChatRequest["messages"];
  tools: unknown[] | undefined;
  response_format: unknown;
  body: Record<string, unknown>;
  /** Request headers, lower-cased (test keys only: this double is never pointed at by real clients). */
  headers: Record<string, string>;
  /** `Date.now()` when the request arrived and when the reply was sent (or the call gave up). */
  startedAt: number;
  endedAt?: number;
  /** HTTP status sent, or `undefined` while in flight. */
  status?: number;
  /** The reply kind: `content`, `toolCalls`, `json` or the fault name. */
  kind?: string;
}

/** Options of {@linkcode startScriptedServer}. */
export interface ScriptedServerOptions {
  /** Handler for every model without a route in `roles`. */
  handler?: ScriptHandler;
  /** Handlers keyed by the request's `model` field, so one server can play several roles. */
  roles?: Record<string, ScriptHandler>;
  /** Fixed latency added to every chat call before replying (or a function of the call). */
  latencyMs?: number | ((req: ParsedChatRequest, index: number) => number);
  /** Sent as the `x-cm2-policy-version` response header when set. */
  policyVersion?: string | ((req: ParsedChatRequest) => string | undefined);
  /** Sent as `system_fingerprint` when set. */
  systemFingerprint?: string;
  /** Upper bound for any scripted delay, so a hang always ends by itself (default 10 000 ms). */
  maxDelayMs?: number;
  /**
   * Play a policy server that loads adapters: `POST /v1/load_lora_adapter {version}` makes that
   * version live (it is then sent as `x-cm2-policy-version`), `GET /v1/policy_version` reports it.
   * Loads are recorded in {@linkcode ScriptedServer.adapterLoads}.
   */
  adapters?: boolean;
  /** Requests for a model loaded as a LoRA adapter are answered by this model's handler. */
  loraBase?: string;
}

/** A running scripted server. */
export interface ScriptedServer {
  /** Base URL for OpenAI clients, e.g. `http://127.0.0.1:43121/v1`. */
  url: string;
  /** Every chat call received so far, in arrival order. */
  calls: RecordedCall[];
  /** Adapter versions loaded through `/v1/load_lora_adapter`, in order (with `adapters: true`). */
  adapterLoads: number[];
  /** vLLM/SGLang-shaped loads `{lora_name, lora_path}`, in order, with the route used. */
  loraLoads: { name: string; path: string; route: string }[];
  /** Count the calls by a key (default: the model). */
  countBy(key?: (call: RecordedCall) => string): Record<string, number>;
  /** Stop accepting connections, cut scripted delays short and wait for in-flight calls to end. */
  close(): Promise<void>;
}

const DEFAULT_MAX_DELAY_MS = 10_000;

/** Start the test-double server on 127.0.0.1 with an ephemeral port. */
export function startScriptedServer(opts: ScriptedServerOptions): ScriptedServer {
  const calls: RecordedCall[] = [];
  const adapterLoads: number[] = [];
  const loras = new Map<string, string>();
  const loraLoads: { name: string; path: string; route: string }[] = [];
  const perHandler = new Map<ScriptHandler, number>();
  const maxDelay = opts.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
  let sequence = 0;
  // Aborted by close(), so scripted hangs and latencies end at once instead of holding shutdown.
  const closing = new AbortController();

  async function chat(request: Request): Promise<Response> {
    let body: Record<string, unknown>;
    try {
      const parsed = await request.json();
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error("not an object");
      }
      body = parsed as Record<string, unknown>;
    } catch {
      return errorResponse(400, "Request body is not a JSON object", "invalid_request_error");
    }
    const req = parseRequest(body, request.headers);
    const call: RecordedCall = {
      index: calls.length,
      model: req.model,
      messages: req.messages,
      tools: req.tools,
      response_format: req.response_format,
      body,
      headers: req.headers,
      startedAt: Date.now(),
    };
    calls.push(call);
    const finish = (res: Response, kind: string): Response => {
      call.status = res.status;
      call.kind = kind;
      call.endedAt = Date.now();
      return res;
    };
    const base = loras.has(req.model) ? opts.loraBase : undefined;
    const handler = opts.roles?.[base ?? req.model] ?? opts.handler;
    if (!handler) {
      return finish(
        errorResponse(404, `Model ${req.model} is not scripted`, "invalid_request_error"),
        "unknown",
      );
    }
    const handlerIndex = perHandler.get(handler) ?? 0;
    perHandler.set(handler, handlerIndex + 1);
    const reply = await handler(req, handlerIndex);
    const latency = typeof opts.latencyMs === "function" ? opts.latencyMs(req, call.index) : opts.latencyMs;
    if (latency && latency > 0) await sleep(Math.min(latency, maxDelay), closing.signal);

    const headers = new Headers({ "content-type": "application/json" });
    const version = opts.adapters && adapterLoads.length > 0
      ? String(adapterLoads.at(-1))
      : typeof opts.policyVersion === "function"
      ? opts.policyVersion(req)
      : opts.policyVersion;
    if (version) headers.set("x-cm2-policy-version", version);

    if ("fault" in reply) {
      switch (reply.fault) {
        case "429": {
          const h = new Headers(headers);
          if (reply.retryAfterS !== undefined) h.set("retry-after", String(reply.retryAfterS));
          if (reply.retryAfter !== undefined) h.set("retry-after", reply.retryAfter);
          if (reply.retryAfterMs !== undefined) h.set("retry-after-ms", String(reply.retryAfterMs));
          return finish(errorResponse(429, "Rate limit reached (scripted)", "rate_limit_exceeded", h), "429");
        }
        case "500":
          return finish(
            errorResponse(reply.status ?? 500, reply.message ?? "Internal error (scripted)", "server_error"),
            "500",
          );
        case "timeout":
          await sleep(Math.min(reply.delayMs, maxDelay), closing.signal);
          return finish(completion(req, { content: "late" }, headers, ++sequence, opts), "timeout");
        case "truncated-json": {
          const full = JSON.stringify(reply.json ?? judgeVerdict(true));
          const cut = full.slice(0, Math.max(1, Math.floor(full.length / 2)));
          return finish(
            completion(req, { content: cut, finishReason: "length" }, headers, ++sequence, opts),
            "truncated-json",
          );
        }
        case "malformed-json": {
          const content = reply.content ?? "Sure! The answer is yes, the assistant did what was asked.";
          return finish(completion(req, { content }, headers, ++sequence, opts), "malformed-json");
        }
        case "body":
          return finish(new Response(reply.body, { status: 200, headers }), "body");
        case "reset": {
          const stream = new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new TextEncoder().encode('{"id":"chatcmpl-reset","choices":['));
              controller.error(new Error("connection reset (scripted)"));
            },
          });
          return finish(new Response(stream, { status: 200, headers }), "reset");
        }
        case "refusal": {
          const res = reply.via === "content_filter"
            ? completion(req, { content: "", finishReason: "content_filter" }, headers, ++sequence, opts)
            : completion(req, { content: "" }, headers, ++sequence, opts, "I can't help with that.");
          return finish(res, "refusal");
        }
      }
    }
    const kind = "toolCalls" in reply ? "toolCalls" : "json" in reply ? "json" : "content";
    return finish(completion(req, reply, headers, ++sequence, opts), kind);
  }

  function models(): Response {
    const ids = [...Object.keys(opts.roles ?? {}), ...loras.keys()];
    const data = ids.map((id) => ({ id, object: "model", created: 0, owned_by: "scripted" }));
    return Response.json({ object: "list", data });
  }

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const { pathname } = new URL(request.url);
      if (request.method === "POST" && pathname === "/v1/chat/completions") return await chat(request);
      if (request.method === "GET" && pathname === "/v1/models") return models();
      if (
        opts.adapters && request.method === "POST" &&
        (pathname === "/v1/load_lora_adapter" || pathname === "/load_lora_adapter")
      ) {
        const body = await request.json() as { version?: unknown; lora_name?: unknown; lora_path?: unknown };
        if (
          typeof body.lora_name === "string" && typeof body.lora_path === "string" &&
          body.version === undefined
        ) {
          // vLLM / SGLang shape: the adapter is then served under its name.
          loras.set(body.lora_name, body.lora_path);
          loraLoads.push({ name: body.lora_name, path: body.lora_path, route: pathname });
          return new Response(`Success: LoRA adapter '${body.lora_name}' added successfully.`);
        }
        if (typeof body.version !== "number") {
          return errorResponse(400, "version must be a number", "invalid_request_error");
        }
        adapterLoads.push(body.version);
        return Response.json({ version: body.version });
      }
      if (opts.adapters && request.method === "GET" && pathname === "/v1/policy_version") {
        return Response.json({ version: adapterLoads.at(-1) ?? 0 });
      }
      return errorResponse(404, `No route ${request.method} ${pathname}`, "invalid_request_error");
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}/v1`;

  return {
    url,
    calls,
    adapterLoads,
    loraLoads,
    countBy(key = (c) => c.model) {
      const out: Record<string, number> = {};
      for (const c of calls) {
        const k = key(c);
        out[k] = (out[k] ?? 0) + 1;
      }
      return out;
    },
    async close() {
      closing.abort();
      await server.shutdown();
      await server.finished;
    },
  };
}

/** A handler that replays `replies` in order; calls past the end get a 500 naming the overrun. */
export function scriptFromQueue(replies: ScriptedReply[]): ScriptHandler {
  return (_req, index) =>
    replies[index] ??
      { fault: "500", message: `Script has ${replies.length} replies, call ${index} overran it` };
}

/** The judge's verdict object, analysis fields first and `answer` last (as the CM2 judge schema orders them). */
export function judgeVerdict(answer: boolean): Record<string, unknown> {
  return {
    high_level_understanding_of_the_question: "The item asks whether the assistant step meets its condition.",
    analysis_of_if_focus_on: "The step contains the content the item focuses on.",
    analysis_of_pass_condition: answer ? "The pass condition is met." : "The pass condition is not met.",
    analysis_of_failure_examples: answer ? "No failure example applies." : "A failure example applies.",
    answer,
  };
}

/**
 * A judge handler answering every call with a verdict. `answer` is fixed or decided from the prompt
 * (all message contents joined by blank lines).
 */
export function judgeAlways(answer: boolean | ((prompt: string) => boolean)): ScriptHandler {
  return (req) => {
    const prompt = req.messages.map((m) => (typeof m.content === "string" ? m.content : "")).join("\n\n");
    return { json: judgeVerdict(typeof answer === "function" ? answer(prompt) : answer) };
  };
}

function parseRequest(body: Record<string, unknown>, headers: Headers): ParsedChatRequest {
  const req: ParsedChatRequest = {
    model: typeof body.model === "string" ? body.model : "",
    messages: Array.isArray(body.messages) ? body.messages : [],
    body,
    headers: Object.fromEntries(headers),
  };
  if (Array.isArray(body.tools)) req.tools = body.tools;
  if (body.response_format !== undefined) req.response_format = body.response_format;
  return req;
}

type SuccessReply = Extract<ScriptedReply, { content: string } | { toolCalls: unknown } | { json: unknown }>;

function completion(
  req: ParsedChatRequest,
  reply: SuccessReply,
  headers: Headers,
  seq: number,
  opts: ScriptedServerOptions,
  refusal?: string,
): Response {
  let content: string | null = null;
  let toolCalls: unknown[] | undefined;
  if ("json" in reply) content = JSON.stringify(reply.json);
  else if ("toolCalls" in reply) {
    content = reply.content ?? null;
    toolCalls = reply.toolCalls.map((tc, i) => ({
      // Derived from the request, not the arrival order, so a rerun of the same dialogue gets the same ids.
      id: tc.id ?? `call_${requestDigest(req)}_${i}`,
      type: "function",
      function: {
        name: tc.name,
        arguments: typeof tc.arguments === "string" ? tc.arguments : JSON.stringify(tc.arguments),
      },
    }));
  } else content = refusal ? null : reply.content;
  const finishReason = reply.finishReason ?? (toolCalls ? "tool_calls" : "stop");
  const completionText = (content ?? "") + (toolCalls ? JSON.stringify(toolCalls) : "");
  const promptChars = req.messages.reduce(
    (n, m) => n + (typeof m.content === "string" ? m.content.length : 0),
    0,
  );
  const usage = reply.usage ?? {
    promptTokens: Math.ceil(promptChars / 4),
    completionTokens: Math.ceil(completionText.length / 4),
  };
  const choice: Record<string, unknown> = {
    index: 0,
    message: {
      role: "assistant",
      content,
      refusal: refusal ?? null,
      ...(toolCalls ? { tool_calls: toolCalls } : {}),
    },
    finish_reason: finishReason,
    logprobs: null,
  };
  if (reply.tokenIds) {
    choice.token_ids = reply.tokenIds;
    if (req.body.logprobs === true) {
      choice.logprobs = {
        content: reply.tokenIds.map((id) => ({
          token: `token_id:${id}`,
          logprob: -0.5,
          bytes: null,
          top_logprobs: [],
        })),
        refusal: null,
      };
    }
  }
  const body: Record<string, unknown> = {
    id: `chatcmpl-scripted-${seq}`,
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: req.model,
    choices: [choice],
    usage: {
      prompt_tokens: usage.promptTokens,
      completion_tokens: usage.completionTokens,
      total_tokens: usage.promptTokens + usage.completionTokens,
    },
  };
  if (opts.systemFingerprint) body.system_fingerprint = opts.systemFingerprint;
  return new Response(JSON.stringify(body), { status: 200, headers });
}

function errorResponse(status: number, message: string, type: string, headers?: Headers): Response {
  const h = new Headers(headers);
  h.set("content-type", "application/json");
  return new Response(JSON.stringify({ error: { message, type, param: null, code: type } }), {
    status,
    headers: h,
  });
}

/** Resolve after `ms`, or early when `signal` aborts (the server is closing); never rejects. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
