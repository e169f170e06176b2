/**
 * Runtime configuration for the entry points (`worker.ts`, `client.ts`, `scripts/`): reads run
 * config files, connects to Temporal through Temporal's standard environment configuration
 * (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`, or a TOML profile),
 * and builds one model client per role with the key read from the variable the config names.
 * This is the only place besides the scripts that touches `Deno.*`.
 *
 * @module
 */
import { Client } from "@temporalio/client";
import { loadClientConnectConfig } from "@temporalio/envconfig";
import { NativeConnection } from "@temporalio/worker";
import * as path from "node:path";
import { type ConfigIssue, parseRunConfig, type RoleConfig, type RunConfig } from "./core/config.ts";
import type { ChatModel, Role, Sampling } from "./core/llm_types.ts";
import { type ChatModelOptions, createChatModel } from "./llm/client.ts";

/** The repository root (paths in run configs are relative to it unless absolute). */
export const ROOT = path.dirname(new URL(import.meta.url).pathname);

/** Resolves a path from a run config against the repository root. */
export function resolvePath(p: string): string {
  return path.isAbsolute(p) ? p : path.join(ROOT, p);
}

/** Thrown when a config file is missing, not JSON, or invalid; carries every issue. */
export class ConfigError extends Error {
  constructor(readonly file: string, readonly issues: ConfigIssue[]) {
    super(
      `Config ${file} is invalid:\n` +
        issues.map((i) => `  ${i.path}: ${i.message} (found ${JSON.stringify(i.value)})`).join("\n"),
    );
    this.name = "ConfigError";
  }
}

/** Reads and validates a run config file (JSON). `undefined` gives the embedded defaults. */
export async function loadRunConfig(file?: string): Promise<RunConfig> {
  let raw: unknown = {};
  if (file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (err) {
      throw new ConfigError(file, [{
        path: "(file)",
        message: `Cannot read: ${(err as Error).message}`,
        value: file,
      }]);
    }
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(file, [{
        path: "(file)",
        message: `Not valid JSON: ${(err as Error).message}`,
        value: file,
      }]);
    }
  }
  const parsed = parseRunConfig(raw);
  if (!parsed.ok) throw new ConfigError(file ?? "(defaults)", parsed.issues);
  return parsed.config;
}

function temporalConnectConfig() {
  const cfg = loadClientConnectConfig();
  const address = Deno.env.get("TEMPORAL_ADDRESS") ?? cfg.connectionOptions.address ?? "127.0.0.1:7233";
  return {
    connectionOptions: { ...cfg.connectionOptions, address },
    namespace: cfg.namespace ?? Deno.env.get("TEMPORAL_NAMESPACE") ?? "default",
  };
}

/** The Temporal frontend address the CLI and workers connect to (environment, profile, or the embedded one). */
export function temporalAddress(): string {
  return temporalConnectConfig().connectionOptions.address;
}

/**
 * A Temporal client from the standard environment configuration. It runs over the SDK's native
 * (Rust) connection, not grpc-js: under Deno, grpc-js over `node:http2` aborts the process when the
 * server goes away (an nghttp2 assertion on GOAWAY), which a server restart must not do.
 */
export async function connectClient(): Promise<
  { client: Client; connection: NativeConnection; address: string }
> {
  const { connectionOptions, namespace } = temporalConnectConfig();
  const connection = await NativeConnection.connect(connectionOptions);
  return { client: new Client({ connection, namespace }), connection, address: connectionOptions.address };
}

/**
 * A worker connection from the standard environment configuration. A worker started while Temporal is down
 * (a restart, a machine booting both) waits for it: it retries with backoff for `waitS` seconds (default
 * `CM2_TEMPORAL_WAIT_S` or 120), saying once what it waits for, then fails with the last error.
 */
export async function connectWorker(
  opts: { waitS?: number; log?: (line: string) => void } = {},
): Promise<{ connection: NativeConnection; namespace: string }> {
  const { connectionOptions, namespace } = temporalConnectConfig();
  const waitS = opts.waitS ?? Number(Deno.env.get("CM2_TEMPORAL_WAIT_S") ?? 120);
  const log = opts.log ?? ((line: string) => console.error(line));
  const deadline = Date.now() + waitS * 1000;
  for (let attempt = 0, delay = 250;; attempt++, delay = Math.min(delay * 2, 5_000)) {
    try {
      return { connection: await NativeConnection.connect(connectionOptions), namespace };
    } catch (err) {
      if (Date.now() + delay > deadline) throw err;
      if (attempt === 0) {
        log(
          `Temporal at ${connectionOptions.address} is not reachable (${
            (err as Error).message.slice(0, 120)
          }); ` +
            `waiting up to ${waitS} s`,
        );
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** The Web UI base URL: `CM2_TEMPORAL_UI` or the embedded server's. */
export function webUiUrl(): string {
  return Deno.env.get("CM2_TEMPORAL_UI") ?? "http://127.0.0.1:8233";
}

const modelCache = new Map<string, ChatModel>();

/**
 * The model factory the orchestrator's activities use: one client per (role, endpoint), cached,
 * with the key read from the environment variable the run config names.
 */
export function modelFactory(role: Role, config: RunConfig): ChatModel {
  const cfg = config.models[role];
  const key = JSON.stringify([role, cfg]);
  let model = modelCache.get(key);
  if (!model) {
    model = roleModel(role, cfg);
    modelCache.set(key, model);
  }
  return model;
}

/** Builds the model client of one role; the API key comes from the environment only. */
export function roleModel(role: Role, cfg: RoleConfig): ChatModel {
  const apiKey = cfg.apiKeyEnv ? Deno.env.get(cfg.apiKeyEnv) : undefined;
  if (cfg.apiKeyEnv && !apiKey) {
    throw new Error(`The ${role} model needs an API key in $${cfg.apiKeyEnv}, which is not set`);
  }
  return createChatModel(chatModelOptionsOf(role, cfg, apiKey));
}

/**
 * The client options of one role. A vLLM endpoint or cm2's policy server (`adapterApi` `vllm` or `cm2`) is
 * asked for the completion's token ids too, so that the trainer gets the sampled tokens and their log-probs
 * (rollout correction); other servers get only the standard `logprobs` field, which strict servers accept.
 */
export function chatModelOptionsOf(role: Role, cfg: RoleConfig, apiKey?: string): ChatModelOptions {
  return {
    role,
    baseURL: cfg.baseURL,
    model: cfg.model,
    ...(apiKey ? { apiKey } : {}),
    timeoutMs: cfg.timeoutMs,
    ...(cfg.jsonMaxString ? { jsonMaxString: cfg.jsonMaxString } : {}),
    ...(cfg.adapterApi === "vllm" || cfg.adapterApi === "cm2" ? { returnTokenIds: true } : {}),
    defaults: Object.fromEntries(Object.entries(cfg.sampling).filter(([, v]) => v !== undefined)) as Sampling,
  };
}
