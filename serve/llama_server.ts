/**
 * OpenAI-compatible chat-completions server over a GGUF model, in-process through the prebuilt npm
 * binding `@fugood/llama.node` (llama.cpp): the embedded default's judge, simulator and labeler endpoint.
 *
 * Endpoints (127.0.0.1 by default): `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.
 * `response_format` `json_schema` (and `json_object`) become llama.cpp JSON-schema grammars, so the
 * answer is constrained to the schema while the token limit allows. Requests run on `--parallel` slots
 * (1 = one at a time); up to `--max-queue` more wait, FIFO; beyond that the server answers 429 with
 * `Retry-After` (the client's `RateLimited`, retried by Temporal). A client that disconnects stops its
 * generation.
 *
 * llama.cpp writes its own logs (model load, one line per prompt with token ids, never text) to stdout and
 * stderr; this server writes one JSON line per request (ids, token counts, latency; no content) to stderr.
 *
 * @example Start it
 * ```sh
 * deno run --allow-read --allow-env --allow-net=127.0.0.1 --allow-ffi --allow-sys serve/llama_server.ts \
 *   --model .cm2/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8766 --ctx 4096 --threads 1 --json-max-string 200
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import * as path from "node:path";
import { loadModel } from "@fugood/llama.node";
import {
  BadRequestError,
  type BindingCompletionOptions,
  type BindingResult,
  completionBudget,
  errorBody,
  OPENAI_SAMPLING_DEFAULTS,
  parseRequest,
  prepareRequest,
  type SamplingDefaults,
  toChatCompletion,
} from "./openai_map.ts";

/** Response header naming the policy (adapter) version, as in `llm/client.ts`. */
const POLICY_VERSION_HEADER = "x-cm2-policy-version";
const MAX_BODY_BYTES = 16 * 1024 * 1024;

/** Server options (the CLI flags). */
export interface LlamaServerOptions {
  model: string;
  host: string;
  port: number;
  /** Context tokens per slot. */
  ctx: number;
  threads: number;
  /** Concurrent generations; 1 runs requests one at a time. */
  parallel: number;
  /** Requests allowed to wait for a slot before the server answers 429. */
  maxQueue: number;
  /** Model id reported in responses and `/v1/models`. */
  alias: string;
  /** When set, sent as `x-cm2-policy-version` and `system_fingerprint`. */
  policyVersion?: string;
  /** When set, JSON-schema strings without `maxLength` get this one (see `boundStrings`). */
  jsonMaxString?: number;
  defaults: SamplingDefaults;
}

// The binding ships no type declarations; these are the parts this server uses.
interface LlamaModelInfo {
  desc: string;
  nParams: number;
  size: number;
  chatTemplates: {
    jinja: { defaultCaps?: { tools: boolean }; toolUse: boolean; toolUseCaps?: { tools: boolean } };
  };
}
interface ParallelHandle {
  promise: Promise<BindingResult>;
  stop: () => void;
}
interface LlamaContext {
  getModelInfo(): LlamaModelInfo;
  getSystemInfo(): string;
  getFormattedChat(
    messages: unknown[],
    template?: string,
    params?: Record<string, unknown>,
  ): { prompt: string };
  tokenize(text: string): Promise<{ tokens: Int32Array }>;
  completion(options: BindingCompletionOptions): Promise<BindingResult>;
  stopCompletion(): void;
  release(): Promise<void>;
  parallel: {
    enable(config: { n_parallel: number; n_batch: number }): Promise<boolean>;
    completion(options: BindingCompletionOptions): Promise<ParallelHandle>;
  };
}

/** Raised when the wait queue is full (HTTP 429). */
class QueueFullError extends Error {}
/** Raised when the client went away before its request ran. */
class AbortedError extends Error {}

/**
 * Runs completions on at most `slots` generations at once, FIFO, with a bounded wait queue. With one
 * slot it uses the binding's plain completion (one at a time); with more, the binding's parallel slots.
 */
class Scheduler {
  #active = 0;
  #waiting: { start: () => void; fail: (e: Error) => void }[] = [];

  constructor(
    readonly model: { ctx: LlamaContext; recover: () => Promise<void> },
    readonly slots: number,
    readonly maxQueue: number,
  ) {}

  get active(): number {
    return this.#active;
  }
  get queued(): number {
    return this.#waiting.length;
  }

  async run(options: BindingCompletionOptions, signal: AbortSignal): Promise<BindingResult> {
    await this.#acquire(signal);
    try {
      if (signal.aborted) throw new AbortedError("Client disconnected");
      const ctx = this.model.ctx;
      if (this.slots === 1) {
        const onAbort = () => ctx.stopCompletion();
        signal.addEventListener("abort", onAbort, { once: true });
        try {
          return await ctx.completion(options);
        } catch (e) {
          // @fugood/llama.node 1.7.15 never clears its "completion in progress" mark when a completion
          // throws: every later call would fail with "Another completion is in progress". Start afresh.
          await this.model.recover();
          throw e;
        } finally {
          signal.removeEventListener("abort", onAbort);
        }
      }
      const handle = await ctx.parallel.completion(options);
      const onAbort = () => handle.stop();
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        return await handle.promise;
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    } finally {
      this.#release();
    }
  }

  #acquire(signal: AbortSignal): Promise<void> {
    if (this.#active < this.slots) {
      this.#active++;
      return Promise.resolve();
    }
    if (this.#waiting.length >= this.maxQueue) {
      return Promise.reject(
        new QueueFullError(`All ${this.slots} slots busy and ${this.maxQueue} requests waiting`),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        },
        fail: reject,
      };
      const onAbort = () => {
        const i = this.#waiting.indexOf(entry);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(new AbortedError("Client disconnected while queued"));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(entry);
    });
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next) next.start(); // the permit passes to the next waiter
    else this.#active--;
  }
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function randomHex(bytes: number): string {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A running server. */
export interface LlamaServer {
  /** Base URL including `/v1`. */
  baseURL: string;
  port: number;
  /** Stop listening, wait for running requests, and free the model. */
  close(): Promise<void>;
}

/**
 * Load the model and start serving. Resolves once the server listens. Long because it holds the HTTP
 * routes of an OpenAI-compatible server as one closure over the loaded model and its request queue.
 */
export async function startLlamaServer(opts: LlamaServerOptions): Promise<LlamaServer> {
  const load = async () => {
    const c = await loadModel({
      model: opts.model,
      n_ctx: opts.ctx * opts.parallel, // llama.cpp splits the context evenly over the sequences
      n_parallel: opts.parallel,
      n_threads: opts.threads,
      n_gpu_layers: 0,
      ctx_shift: false, // never drop prompt tokens silently: a too-long prompt is a 400
    }) as unknown as LlamaContext;
    if (opts.parallel > 1 && !(await c.parallel.enable({ n_parallel: opts.parallel, n_batch: 512 }))) {
      throw new Error(`The binding refused parallel mode with ${opts.parallel} slots`);
    }
    return c;
  };
  const model = {
    ctx: await load(),
    async recover() {
      const old = model.ctx;
      model.ctx = await load();
      log({ event: "context reloaded after a failed completion" });
      // Requests may still be formatting or tokenizing on the old context: free it a little later.
      setTimeout(() => old.release().catch(() => {}), 10_000);
    },
  };
  const info = model.ctx.getModelInfo();
  const jinja = info.chatTemplates.jinja;
  const nativeTools = Boolean(jinja.defaultCaps?.tools || (jinja.toolUse && jinja.toolUseCaps?.tools));
  const scheduler = new Scheduler(model, opts.parallel, opts.maxQueue);
  const created = Math.floor(Date.now() / 1000);
  const versionHeaders: Record<string, string> = opts.policyVersion
    ? { [POLICY_VERSION_HEADER]: opts.policyVersion }
    : {};

  async function chat(req: Request): Promise<Response> {
    const started = performance.now();
    const id = `chatcmpl-${randomHex(12)}`;
    const length = Number(req.headers.get("content-length") ?? 0);
    if (length > MAX_BODY_BYTES) {
      return json(
        413,
        errorBody(
          `Request body has ${length} bytes, the limit is ${MAX_BODY_BYTES}`,
          "invalid_request_error",
        ),
      );
    }
    let body: unknown;
    try {
      body = await req.json();
    } catch {
      return json(400, errorBody("Request body is not valid JSON", "invalid_request_error"));
    }
    let prepared;
    let promptTokens: number;
    let options: BindingCompletionOptions;
    try {
      prepared = prepareRequest(parseRequest(body), {
        nativeTools,
        defaults: opts.defaults,
        ...(opts.jsonMaxString ? { jsonMaxString: opts.jsonMaxString } : {}),
      });
      const { messages, ...rest } = prepared.options;
      let prompt: string;
      try {
        prompt = model.ctx.getFormattedChat(messages, undefined, {
          jinja: true,
          ...(rest.response_format ? { response_format: rest.response_format } : {}),
          ...(rest.tools ? { tools: rest.tools, tool_choice: rest.tool_choice } : {}),
        }).prompt;
      } catch (e) {
        throw new BadRequestError(`Chat template or response format failed: ${(e as Error).message}`);
      }
      promptTokens = (await model.ctx.tokenize(prompt)).tokens.length;
      options = {
        ...prepared.options,
        n_predict: completionBudget(promptTokens, prepared.maxTokens, opts.ctx),
      };
    } catch (e) {
      if (e instanceof BadRequestError) {
        const code = e.message.startsWith("Prompt has") ? "context_length_exceeded" : undefined;
        return json(400, errorBody(e.message, "invalid_request_error", e.param, code));
      }
      throw e;
    }
    let result: BindingResult;
    try {
      result = await scheduler.run(options, req.signal);
      // @fugood/llama.node 1.7.15: the plain (one-slot) completion leaves the first sampled token out of
      // tokens_predicted (n_predict 8 gives 7); the parallel path counts it. Checked by llama_server_test.ts.
      if (opts.parallel === 1) result = { ...result, tokens_predicted: result.tokens_predicted + 1 };
    } catch (e) {
      if (e instanceof QueueFullError) {
        return json(429, errorBody(e.message, "rate_limit_error"), { "retry-after": "1" });
      }
      if (e instanceof AbortedError) return json(499, errorBody(e.message, "aborted"));
      const message = (e as Error)?.message ?? String(e);
      log({ id, status: 500, error: message.slice(0, 300) });
      return json(500, errorBody(`Generation failed: ${message}`, "server_error"));
    }
    const out = toChatCompletion(result, {
      id,
      model: opts.alias,
      created: Math.floor(Date.now() / 1000),
      promptTokens,
      toolMode: prepared.toolMode,
      newCallId: () => `call_${randomHex(12)}`,
      ...(opts.policyVersion ? { systemFingerprint: opts.policyVersion } : {}),
    });
    const choice = (out.choices as { finish_reason: string }[])[0]!;
    log({
      id,
      status: 200,
      prompt_tokens: promptTokens,
      completion_tokens: result.tokens_predicted,
      finish_reason: choice.finish_reason,
      grammar: Boolean(options.response_format),
      ms: Math.round(performance.now() - started),
    });
    return json(200, out, versionHeaders);
  }

  async function handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const route = url.pathname.replace(/\/+$/, "");
    try {
      if (route === "/v1/chat/completions") {
        if (req.method !== "POST") return json(405, errorBody("Use POST", "invalid_request_error"));
        return await chat(req);
      }
      if (req.method !== "GET") return json(405, errorBody("Use GET", "invalid_request_error"));
      if (route === "/health") {
        return json(200, {
          status: "ok",
          slots: opts.parallel,
          active: scheduler.active,
          queued: scheduler.queued,
        });
      }
      if (route === "/v1/models") {
        return json(200, {
          object: "list",
          data: [{
            id: opts.alias,
            object: "model",
            created,
            owned_by: "cm2",
            meta: {
              desc: info.desc,
              n_params: info.nParams,
              size: info.size,
              n_ctx_slot: opts.ctx,
              slots: opts.parallel,
            },
          }],
        });
      }
      return json(404, errorBody(`No route ${req.method} ${url.pathname}`, "invalid_request_error"));
    } catch (e) {
      const message = (e as Error)?.message ?? String(e);
      log({ status: 500, error: message.slice(0, 300) });
      return json(500, errorBody(`Internal error: ${message}`, "server_error"));
    }
  }

  const { promise: listening, resolve } = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({ hostname: opts.host, port: opts.port, onListen: resolve }, handle);
  const addr = await listening;
  return {
    baseURL: `http://${addr.hostname}:${addr.port}/v1`,
    port: addr.port,
    async close() {
      await server.shutdown();
      await model.ctx.release();
    },
  };
}

function log(fields: Record<string, unknown>): void {
  console.error(JSON.stringify({ t: new Date().toISOString(), ...fields }));
}

function positiveInt(name: string, v: string | undefined, fallback: number, min = 1): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new Error(`--${name} is ${JSON.stringify(v)}, expected an integer >= ${min}`);
  }
  return n;
}

function number(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`--${name} is ${JSON.stringify(v)}, expected a number`);
  return n;
}

const USAGE = `Usage: llama_server.ts --model PATH [--port 8766] [--host 127.0.0.1] [--ctx 4096] [--threads N]
  [--parallel 1] [--max-queue 16] [--alias NAME] [--policy-version V] [--json-max-string CHARS]
  [--temperature 1] [--top-p 1] [--top-k 0] [--min-p 0]   (defaults where a request sets none)`;

/** Parse the CLI flags. */
export function parseCli(args: string[]): LlamaServerOptions {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      ctx: { type: "string" },
      threads: { type: "string" },
      parallel: { type: "string" },
      "max-queue": { type: "string" },
      alias: { type: "string" },
      "policy-version": { type: "string" },
      "json-max-string": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "top-k": { type: "string" },
      "min-p": { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (!values.model) throw new Error(`--model is required\n${USAGE}`);
  const d = OPENAI_SAMPLING_DEFAULTS;
  const o: LlamaServerOptions = {
    model: values.model,
    host: values.host ?? "127.0.0.1",
    port: positiveInt("port", values.port, 8766, 0), // core/config.ts EMBEDDED_URL
    ctx: positiveInt("ctx", values.ctx, 4096, 64),
    threads: positiveInt(
      "threads",
      values.threads,
      Math.max(1, Math.floor((navigator.hardwareConcurrency || 2) / 2)),
    ),
    parallel: positiveInt("parallel", values.parallel, 1),
    maxQueue: positiveInt("max-queue", values["max-queue"], 16, 0),
    alias: values.alias ?? path.basename(values.model).replace(/\.gguf$/i, ""),
    defaults: {
      temperature: number("temperature", values.temperature, d.temperature),
      top_p: number("top-p", values["top-p"], d.top_p),
      top_k: positiveInt("top-k", values["top-k"], d.top_k, 0),
      min_p: number("min-p", values["min-p"], d.min_p),
    },
  };
  if (values["policy-version"]) o.policyVersion = values["policy-version"];
  if (values["json-max-string"]) {
    o.jsonMaxString = positiveInt("json-max-string", values["json-max-string"], 0);
  }
  return o;
}

if (import.meta.main) {
  let opts: LlamaServerOptions;
  try {
    opts = parseCli(Deno.args);
    await Deno.stat(opts.model);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
  const server = await startLlamaServer(opts);
  log({
    event: "listening",
    url: server.baseURL,
    model: opts.alias,
    slots: opts.parallel,
    ctx_per_slot: opts.ctx,
    threads: opts.threads,
  });
  const stop = async () => {
    await server.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
