/**
 * The run configuration: one JSON file, validated with zod, every field defaulted so that `{}` is
 * the embedded demo run. Secrets never appear here: each model role names the environment
 * variable that holds its API key (`apiKeyEnv`).
 *
 * @module
 */
import { z } from "zod";
import { valueAt } from "./records.ts";
import { EVAL_QUEUE, ORCHESTRATOR_QUEUE, TRAINER_QUEUE } from "./names.ts";
import { REWARD_LEVELS, REWARD_PRESET_NAMES } from "./rewards.ts";
import { LOSS_AGG_MODES } from "./trainer_params.ts";

/** Sampling defaults of one role. */
export const SamplingSchema = z.object({
  temperature: z.number().min(0).max(2).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  max_tokens: z.number().int().positive().optional(),
}).strict();

/**
 * Why `value` is not a usable endpoint URL, or null: only http(s); no credentials (keys come through
 * `apiKeyEnv`, so they never enter a workflow input, a history or the store); a missing scheme gets a suggestion.
 */
export function endpointUrlProblem(value: string): string | null {
  const schemeless = !/^[a-z][a-z0-9+.-]*:\/\//i.test(value);
  if (schemeless) {
    const guess = /^(localhost|\d{1,3}(\.\d{1,3}){3}|[\w.-]+\.[a-z]{2,})(:\d+)?(\/|$)/i.test(value)
      ? `; did you mean http://${value}?`
      : "";
    return `is not an http(s) URL${guess}`;
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return "is not a valid URL";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `uses ${url.protocol.slice(0, -1)}:, only http and https endpoints are allowed`;
  }
  if (url.username || url.password) {
    return "holds credentials; put the key in an environment variable and name it in apiKeyEnv";
  }
  return null;
}

const EndpointUrl = z.string().superRefine((v, ctx) => {
  const problem = endpointUrlProblem(v);
  if (problem) ctx.addIssue({ code: "custom", message: `URL ${redactUrl(v)} ${problem}` });
});

const roleFields = {
  /** OpenAI-compatible base URL (http or https, no credentials), ending in `/v1`. */
  baseURL: EndpointUrl,
  model: z.string().min(1),
  /** Name of the environment variable that holds the API key; unset means no key is sent. */
  apiKeyEnv: z.string().regex(/^[A-Z_][A-Z0-9_]*$/, "must be an environment variable name").optional(),
  timeoutMs: z.number().int().positive().default(120_000),
  /** How the endpoint does structured output: JSON-schema response format, JSON object mode, or prompt only. */
  jsonMode: z.enum(["schema", "object", "none"]).default("schema"),
  /** Give JSON-schema strings this `maxLength` (small local models under a grammar); unset: schemas as given. */
  jsonMaxString: z.number().int().positive().optional(),
  /** Most calls in flight to this endpoint at once, across a worker. */
  concurrency: z.number().int().positive().default(8),
  /**
   * How a new policy adapter is made live on this endpoint (policy role): `cm2` = the embedded
   * policy server (`/v1/load_lora_adapter` with a checkpoint ref, verified by `/v1/policy_version`);
   * `vllm` = vLLM's `/v1/load_lora_adapter` and `sglang` = SGLang's `/load_lora_adapter`, both with
   * `{lora_name, lora_path}` (the adapter is written to `<store>/adapters/<run>/v<n>/`, which the
   * server must see) and verified in `/v1/models`; later rollouts then ask for model `<run>-v<n>`;
   * `none` = the endpoint cannot load adapters (the version is recorded, not verified).
   */
  adapterApi: z.enum(["cm2", "vllm", "sglang", "none"]).default("none"),
  /** Prices in US dollars per million tokens, for cost estimates and USD budgets; unset means unknown. */
  prices: z.object({ input: z.number().min(0), output: z.number().min(0) }).strict().optional(),
};

const EMBEDDED_URL = "http://127.0.0.1:8766/v1";
const EMBEDDED_MODEL = "smollm2-135m-instruct";

function role(
  defaults: z.infer<typeof SamplingSchema>,
  url = EMBEDDED_URL,
  adapterApi: "cm2" | "none" = "none",
) {
  return z.object({
    ...roleFields,
    adapterApi: roleFields.adapterApi.default(adapterApi),
    baseURL: roleFields.baseURL.default(url),
    model: roleFields.model.default(EMBEDDED_MODEL),
    sampling: SamplingSchema.default(defaults),
  }).strict().prefault({});
}

/** One model endpoint: where, which model, which env var holds the key, sampling. */
export const RoleSchema = role({});

/** CM2 method settings. Defaults follow CM2's final choice (trajectory level, Fnorm 1) at demo scale. */
export const Cm2Schema = z.object({
  tasksPerIteration: z.number().int().positive().default(2),
  groupSize: z.number().int().positive().default(4),
  iterations: z.number().int().positive().default(3),
  advantageLevel: z.enum(REWARD_LEVELS).default("trajectory"),
  preset: z.enum(REWARD_PRESET_NAMES).default("fixed"),
  /** Overrides of the preset's switches; unset means the preset's value (see core/rewards.ts). */
  fnorm: z.union([z.literal("std"), z.literal(1)]).optional(),
  failedEpisodes: z.enum(["keep-zero", "drop"]).optional(),
  minGroupSupport: z.number().int().min(0).optional(),
  eta: z.number().min(0).max(1).optional(),
  seed: z.number().int().default(0),
  limits: z.object({
    maxAssistantSteps: z.number().int().positive().default(30),
    maxUserTurns: z.number().int().positive().default(30),
    maxContextTokens: z.number().int().positive().default(12_000),
    /** Most tokens after the first prompt per episode (the released run's response length, 8 000). */
    maxEpisodeResponseTokens: z.number().int().positive().default(8_000),
    /**
     * Records whose first prompt (system, tools, first user message) is longer are dropped when the dataset
     * is prepared, and counted in its summary (the released data filter: 3 500).
     */
    maxPromptTokens: z.number().int().positive().default(3_500),
  }).strict().prefault({}),
  judge: z.object({
    votes: z.number().int().positive().default(1),
    mode: z.enum(["exhaustive", "incremental"]).default("incremental"),
    itemsPerCall: z.number().int().positive().default(1),
    /** Answer false without a judge call where an item's focus part is absent from the step (beyond CM2). */
    skipAbsentFocus: z.boolean().default(true),
  }).strict().prefault({}),
  simulator: z.object({
    cache: z.boolean().default(true),
    replayScope: z.enum(["all-turns", "up-to-current-turn"]).default("all-turns"),
  }).strict().prefault({}),
  /** Episodes in flight per iteration (sliding window). */
  episodeConcurrency: z.number().int().positive().default(8),
  /** Run a validation pass (no update) every N iterations; 0 turns it off. */
  validationEvery: z.number().int().min(0).default(0),
  validationTasks: z.number().int().min(0).default(2),
  /** Episodes per held-out task in a validation pass (default: `groupSize`). */
  validationSamples: z.number().int().positive().optional(),
  /** Continue-as-new every K iterations. */
  continueAsNewEvery: z.number().int().positive().default(10),
  /** An episode continues as new once its history has this many events (Temporal warns at 10,240). */
  episodeHistoryEvents: z.number().int().min(10).max(10_000).default(4_000),
}).strict().prefault({});

/** Trainer settings, sent to the Python trainer worker with every update. */
export const TrainerSchema = z.object({
  taskQueue: z.string().default(TRAINER_QUEUE),
  /** A trainer that sends no heartbeat for this long is taken for dead and its update is retried elsewhere. */
  heartbeatTimeoutS: z.number().int().positive().default(300),
  base: z.object({
    kind: z.enum(["hf", "gguf"]).default("gguf"),
    path: z.string().default(".cm2/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
  }).strict().prefault({}),
  /** LoRA learning rate: 10× the released script's full fine-tuning rate (docs/decisions.md). */
  lr: z.number().positive().default(1e-5),
  klCoef: z.number().min(0).default(1e-4),
  clipLow: z.number().min(0).default(0.2),
  clipHigh: z.number().min(0).default(0.2),
  clipRatioC: z.number().gt(1).default(3),
  miniBatches: z.number().int().positive().default(1),
  loraRank: z.number().int().positive().default(8),
  loraAlpha: z.number().positive().default(16),
  maxGradNorm: z.number().positive().default(1),
  /** Loss aggregation; unset: the reward preset's (`reference`: `seq-mean-token-mean`, else `token-mean`). */
  lossAgg: z.enum(LOSS_AGG_MODES).optional(),
  /**
   * Rollout correction: cap of the per-token importance weight between the trainer's and the serving
   * engine's log-probs (the released run: 2). Tokens without serving log-probs weigh 1. null: off.
   */
  rolloutIsCap: z.number().positive().nullable().default(2),
  /** Rollout correction veto: drop a trajectory with any token weight below this (released run: 1e-4; 0: off). */
  rolloutIsVeto: z.number().min(0).lt(1).default(1e-4),
  /**
   * Start RL from a cold-start SFT checkpoint (LoRA): its store name (`sft/<run>/final`) or ref URI. The policy
   * starts as the SFT model, which is also the KL reference (as in the paper).
   */
  init: z.string().min(1).optional(),
}).strict().prefault({});

/**
 * Cold-start SFT (`cm2 sft`): trained by the Python trainer on the assistant tokens of the reference
 * trajectories. Defaults are pinned to `tests/contracts/sft_defaults.json` (the trainer's `SftConfig` too).
 */
export const SftSchema = z.object({
  /** The training records: `datasets/<name>` in the store (e.g. `datasets/<prefix>-sft` of `cm2 data split`). */
  dataset: z.string().regex(/^datasets\/./, "must be datasets/<name>").default("datasets/sample-sft"),
  /** Held-out records for the held-out loss at each checkpoint; unset: none. */
  heldOut: z.string().regex(/^datasets\/./, "must be datasets/<name>").optional(),
  /** LoRA learning rate: 10× the released SFT's full fine-tuning 1e-5 (docs/decisions.md). */
  lr: z.number().positive().default(1e-4),
  epochs: z.number().int().positive().default(2),
  /** Samples per optimizer step. */
  batchSize: z.number().int().positive().default(8),
  /** Stop after this many optimizer steps (0: run every epoch). */
  maxSteps: z.number().int().min(0).default(0),
  /** A checkpoint (and a held-out loss) every this many steps, and at the end; a killed run resumes there. */
  checkpointEvery: z.number().int().positive().default(50),
  finetune: z.enum(["lora", "full"]).default("lora"),
  loraRank: z.number().int().positive().default(8),
  loraAlpha: z.number().positive().default(16),
  /** Samples longer than this many tokens are skipped (and counted). */
  maxTokens: z.number().int().positive().default(12_000),
  seed: z.number().int().default(0),
  warmupRatio: z.number().min(0).lt(1).default(0.1),
  schedule: z.enum(["cosine", "constant"]).default("cosine"),
  maxGradNorm: z.number().positive().default(1),
}).strict().prefault({});

/** Checklist labeling (`cm2 label`); command-line flags override these. */
export const LabelingSchema = z.object({
  /** Independent checklist variants per record (one labeler call each, more on retries). */
  variants: z.number().int().positive().default(1),
  /** Labeler calls in flight (sliding window). */
  concurrency: z.number().int().positive().default(8),
  /** Calls per (record, variant) before it is rejected; retries show the model its errors. */
  maxAttempts: z.number().int().positive().default(3),
  /** A turn's weights are renormalised when their sum is off 1 by at most this; beyond it, retried. */
  weightRepairTolerance: z.number().min(0).max(0.5).default(0.05),
  /** Pause when this run's labeler spend reaches this many US dollars (needs `models.labeler.prices`). */
  budgetUsd: z.number().min(0).optional(),
  /** Pause when this run's labeler calls reach this many tokens (prompt + completion). */
  budgetTokens: z.number().int().min(0).optional(),
}).strict().prefault({});

/** The LLM data stages (`cm2 data filter --llm`, `cm2 data compress-cot`); command-line flags override these. */
export const StagesSchema = z.object({
  /** Calls in flight (sliding window), with the `labeler` model role. */
  concurrency: z.number().int().positive().default(8),
  /** Calls per record before its last answer's problems settle it (retries show the model those problems). */
  maxAttempts: z.number().int().positive().default(3),
  /** `compress-cot`: the share of its original length (estimated tokens) a reasoning may keep. */
  compressTarget: z.number().gt(0).max(1).default(0.5),
  /** Pause when this run's spend reaches this many US dollars (needs `models.labeler.prices`). */
  budgetUsd: z.number().min(0).optional(),
  /** Pause when this run's calls reach this many tokens (prompt + completion). */
  budgetTokens: z.number().int().min(0).optional(),
}).strict().prefault({});

/**
 * Checkpoint evaluation during a run: every `every` iterations (0: off) the new checkpoint is evaluated on these
 * benchmarks with their own graders (`cm2 eval`), before the next iteration; the scores go into the run's status
 * and the store (`runs/<run>/evals/it-<n>/<bench>-…`).
 */
export const EvalConfigSchema = z.object({
  every: z.number().int().min(0).default(0),
  benchmarks: z.array(z.enum(["bfcl", "tau2"])).min(1).default(["bfcl"]),
  /** Categories (empty: each benchmark's offline categories). */
  categories: z.array(z.string().min(1)).default([]),
  /** Tasks per category: a fixed, seeded subset (null: all). */
  limit: z.number().int().positive().nullable().default(5),
  /** Trials per task (default: bfcl 1, tau2 4). */
  trials: z.number().int().positive().optional(),
  concurrency: z.number().int().positive().default(1),
  maxTokens: z.number().int().positive().default(512),
  maxSteps: z.number().int().positive().default(30),
  taskTimeoutS: z.number().int().positive().default(1800),
  seed: z.number().int().default(0),
  /** The task queue of evaluations (`worker.ts --eval-queue`). */
  taskQueue: z.string().default(EVAL_QUEUE),
}).strict().prefault({});

/** The full run configuration. */
/**
 * Where the run's artifacts live: `file:<dir>` (relative to the project root), `file:///abs/dir`, or
 * `s3://bucket[/prefix][?endpoint=…&region=…]` (see `store/open.ts`). The orchestrator workers must be
 * started on the same store (`deno task worker --store <url>`); the trainer gets the URL with each update.
 * The older `{ "root": "<dir>" }` form is read as `{ "url": "<dir>" }`.
 */
const StoreSchema = z.preprocess(
  (v) => {
    if (v === undefined) return {};
    if (v && typeof v === "object" && !("url" in v) && "root" in v) {
      const { root, kind: _kind, ...rest } = v as { root: unknown; kind?: unknown };
      return { ...rest, url: root };
    }
    return v;
  },
  z.object({ url: z.string().min(1).default("file:.cm2/store") }).strict(),
);

export const RunConfigSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "must be lowercase letters, digits and dashes").default(
    "demo",
  ),
  dataset: z.object({
    /** A JSONL/JSON dataset file, or a dataset name in the store (`datasets/<name>`). */
    path: z.string().default("data/sample/tooltalk_sample.jsonl"),
    /** Records held out for validation, taken from the end of the dataset. */
    heldOut: z.number().int().min(0).default(2),
    /** Accept records with empty tool responses when a file is imported for the run (τ-bench's `think` tool). */
    allowEmptyToolResponses: z.boolean().default(false),
  }).strict().prefault({}),
  models: z.object({
    policy: role({ temperature: 1, top_p: 1, max_tokens: 512 }, "http://127.0.0.1:8765/v1", "cm2"),
    // room for a strong model's full verdict and simulated result (the released run: 6 000 and 8 000)
    judge: role({ temperature: 0.6, top_p: 0.8, max_tokens: 6000 }),
    simulator: role({ temperature: 0.6, top_p: 0.8, max_tokens: 8000 }),
    labeler: role({ temperature: 1, max_tokens: 4096 }),
  }).strict().prefault({}),
  cm2: Cm2Schema,
  trainer: TrainerSchema,
  sft: SftSchema,
  store: StoreSchema,
  temporal: z.object({ taskQueue: z.string().default(ORCHESTRATOR_QUEUE) }).strict().prefault({}),
  labeling: LabelingSchema,
  stages: StagesSchema,
  eval: EvalConfigSchema,
}).strict();

export type RunConfig = z.infer<typeof RunConfigSchema>;
export type RoleConfig = z.infer<typeof RoleSchema>;

/** One configuration problem: the path of the field, what is wrong, and the value found. */
export interface ConfigIssue {
  path: string;
  message: string;
  value: unknown;
}

const SECRET_KEY_RE = /(api[_-]?key|secret|token|password)$/i;

function findInlineSecrets(value: unknown, at: string[] = [], out: ConfigIssue[] = []): ConfigIssue[] {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      const here = [...at, k];
      if (SECRET_KEY_RE.test(k) && k !== "apiKeyEnv") {
        out.push({
          path: here.join("."),
          message:
            "Secrets are not allowed in the config; put the key in an environment variable and name it in apiKeyEnv",
          value: "[redacted]",
        });
      } else {
        findInlineSecrets(v, here, out);
      }
    }
  }
  return out;
}

/** Parses a config object; returns every problem with its path and value, or the resolved config. */
export function parseRunConfig(
  raw: unknown,
): { ok: true; config: RunConfig } | { ok: false; issues: ConfigIssue[] } {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    return {
      ok: false,
      issues: [{ path: "(root)", message: "A run config must be a JSON object", value: raw }],
    };
  }
  const secrets = findInlineSecrets(raw);
  const parsed = RunConfigSchema.safeParse(raw);
  const issues: ConfigIssue[] = [...secrets];
  if (!parsed.success) {
    for (const iss of parsed.error.issues) {
      const keys = iss.code === "unrecognized_keys" ? iss.keys : [];
      if (keys.length > 0) {
        for (const key of keys) {
          const p = [...iss.path, key];
          if (secrets.some((s) => s.path === p.map(String).join("."))) continue;
          issues.push({ path: p.map(String).join("."), message: "Unknown field", value: valueAt(raw, p) });
        }
      } else {
        const value = valueAt(raw, iss.path);
        issues.push({
          path: iss.path.map(String).join(".") || "(root)",
          message: iss.message,
          value: typeof value === "string" ? redactUrl(value) : value,
        });
      }
    }
  }
  if (issues.length > 0 || !parsed.success) return { ok: false, issues };
  return { ok: true, config: parsed.data };
}

/** Removes credentials embedded in a URL (`https://user:pass@host` → `https://***@host`). */
export function redactUrl(url: string): string {
  return url.replace(/^([\w+.-]+:\/\/)[^/@]+@/, "$1***@");
}

/**
 * The config as it may be shown or stored in a memo: URL credentials redacted, and for each role
 * whether its key variable is set (`apiKey: "set" | "missing" | "none"`), never the key itself.
 */
export function redactedConfig(config: RunConfig, env: (name: string) => string | undefined): unknown {
  const models = Object.fromEntries(
    Object.entries(config.models).map(([name, r]) => [
      name,
      {
        ...r,
        baseURL: redactUrl(r.baseURL),
        apiKey: r.apiKeyEnv === undefined ? "none" : env(r.apiKeyEnv) ? "set" : "missing",
      },
    ]),
  );
  return { ...config, models };
}

/** A one-line summary of a config, for the Temporal memo and progress output. */
export function configSummary(config: RunConfig): string {
  const c = config.cm2;
  return `${config.name}: ${c.iterations} it × ${c.tasksPerIteration} tasks × G=${c.groupSize}, ` +
    `${c.advantageLevel}/${c.preset}, Fnorm=${c.fnorm ?? "preset"}, policy=${config.models.policy.model}, ` +
    `judge=${config.models.judge.model}, dataset=${config.dataset.path}`;
}
