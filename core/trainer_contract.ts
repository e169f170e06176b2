/**
 * The wire contract between the orchestrator and the Python trainer worker (task queue
 * `cm2-trainer`, activity `updatePolicy`). The JSON fixtures in `tests/contracts/` decode with
 * these schemas here and with `trainer/cm2_trainer/contract.py` on the Python side.
 *
 * @module
 */
import { z } from "zod";
import { RefSchema } from "./ref.ts";
import { LOSS_AGG_MODES } from "./trainer_params.ts";

/** Trainer hyperparameters sent with every update. */
export const TrainerParamsSchema = z.object({
  lr: z.number().positive(),
  klCoef: z.number().min(0),
  clipLow: z.number().min(0),
  clipHigh: z.number().min(0),
  clipRatioC: z.number().gt(1),
  miniBatches: z.number().int().positive(),
  loraRank: z.number().int().positive(),
  loraAlpha: z.number().positive(),
  maxGradNorm: z.number().positive(),
  /** Optional on the wire: requests written before they existed leave them to the trainer's defaults. */
  lossAgg: z.enum(LOSS_AGG_MODES).optional(),
  rolloutIsCap: z.number().positive().nullable().optional(),
  rolloutIsVeto: z.number().min(0).lt(1).optional(),
  seed: z.number().int(),
});

/** Input of `updatePolicy`. */
export const UpdateRequestSchema = z.object({
  runId: z.string().min(1),
  iteration: z.number().int().min(0),
  batch: RefSchema,
  base: z.object({ kind: z.enum(["hf", "gguf"]), path: z.string().min(1) }),
  parent: RefSchema.nullable(),
  /** The store's URL (`file:///…` or `s3://…`); the trainer opens it with `open_store`. */
  storeUrl: z.string().min(1),
  trainer: TrainerParamsSchema,
  /** An SFT checkpoint (`cm2.sft-checkpoint/v1`, LoRA) the policy starts from and the KL reference is. */
  init: RefSchema.nullable().optional(),
});

/** Metrics of one update. */
export const UpdateMetricsSchema = z.object({
  loss: z.number(),
  pgLoss: z.number(),
  kl: z.number(),
  clipFrac: z.number(),
  gradNorm: z.number(),
  tokens: z.number().int().min(0),
  seconds: z.number().min(0),
  /** Rollout correction: mean capped weight over the tokens with serving log-probs; null when none had them. */
  isMeanWeight: z.number().nullable().optional(),
  /** Rollout correction: share of the batch's trajectories vetoed; null when no token had serving log-probs. */
  isVetoedShare: z.number().min(0).max(1).nullable().optional(),
  /** Mean entropy (nats) of the policy's next-token distribution over the loss tokens, before the update. */
  entropy: z.number().min(0).nullable().optional(),
});

/** Output of `updatePolicy`. */
export const UpdateResultSchema = z.object({
  runId: z.string(),
  iteration: z.number().int().min(0),
  version: z.number().int().min(1),
  checkpoint: RefSchema,
  reused: z.boolean(),
  metrics: UpdateMetricsSchema,
});

const ChatToolCallSchema = z.object({
  id: z.string(),
  type: z.literal("function"),
  function: z.object({ name: z.string(), arguments: z.string() }),
});

/** One training sample: a transcript with an advantage per trained assistant message. */
export const BatchSampleSchema = z.object({
  episodeId: z.string(),
  groupId: z.string(),
  tools: z.array(z.record(z.string(), z.unknown())),
  messages: z.array(z.object({
    role: z.enum(["system", "user", "assistant", "tool"]),
    content: z.string().nullable(),
    tool_calls: z.array(ChatToolCallSchema).optional(),
    tool_call_id: z.string().optional(),
  })),
  advantages: z.array(z.object({ messageIndex: z.number().int().min(0), advantage: z.number() })),
  completions: z.array(z.object({
    messageIndex: z.number().int().min(0),
    tokenIds: z.array(z.number().int().min(0)),
    logprobs: z.array(z.number()).optional(),
  })).optional(),
});

/** The batch blob an update trains on. */
export const BatchSchema = z.object({
  schema: z.literal("cm2.batch/v1"),
  runId: z.string(),
  iteration: z.number().int().min(0),
  samples: z.array(BatchSampleSchema),
});

export type TrainerParams = z.infer<typeof TrainerParamsSchema>;
export type UpdateRequest = z.infer<typeof UpdateRequestSchema>;
export type UpdateResult = z.infer<typeof UpdateResultSchema>;
export type UpdateMetrics = z.infer<typeof UpdateMetricsSchema>;
export type BatchSample = z.infer<typeof BatchSampleSchema>;
export type Batch = z.infer<typeof BatchSchema>;

/** The SFT settings on the wire (`sft` of the run config, less the dataset names). */
export const SftParamsSchema = z.object({
  lr: z.number().positive(),
  epochs: z.number().int().positive(),
  batchSize: z.number().int().positive(),
  maxSteps: z.number().int().min(0),
  checkpointEvery: z.number().int().positive(),
  finetune: z.enum(["lora", "full"]),
  loraRank: z.number().int().positive(),
  loraAlpha: z.number().positive(),
  maxTokens: z.number().int().positive(),
  seed: z.number().int(),
  warmupRatio: z.number().min(0).lt(1),
  schedule: z.enum(["cosine", "constant"]),
  maxGradNorm: z.number().positive(),
});

/** Input of `sftTrain`. */
export const SftRequestSchema = z.object({
  runId: z.string().min(1),
  dataset: RefSchema,
  heldOut: RefSchema.nullable(),
  base: z.object({ kind: z.enum(["hf", "gguf"]), path: z.string().min(1) }),
  storeUrl: z.string().min(1),
  sft: SftParamsSchema,
});

/** Output of `sftTrain`: the final checkpoint and one loss line per checkpoint. */
export const SftResultSchema = z.object({
  runId: z.string(),
  steps: z.number().int().min(0),
  checkpoint: RefSchema,
  reused: z.boolean(),
  history: z.array(z.object({
    step: z.number().int().min(0),
    loss: z.number().nullable(),
    heldOutLoss: z.number().nullable(),
  })),
  skipped: z.object({ tooLong: z.number().int().min(0), noLossToken: z.number().int().min(0) }),
});

export type SftParams = z.infer<typeof SftParamsSchema>;
export type SftRequest = z.infer<typeof SftRequestSchema>;
export type SftResult = z.infer<typeof SftResultSchema>;

/** The trainer worker's activities, as workflows see them. */
export interface TrainerActivities {
  updatePolicy(req: UpdateRequest): Promise<UpdateResult>;
  sftTrain(req: SftRequest): Promise<SftResult>;
}

/** The checkpoint manifest a checkpoint ref points at (`runs/<run>/checkpoints/it-<n>` names it). */
export const CheckpointManifestSchema = z.object({
  schema: z.literal("cm2.checkpoint/v1"),
  runId: z.string(),
  iteration: z.number().int().min(0),
  version: z.number().int().min(1),
  base: z.object({ kind: z.enum(["hf", "gguf"]), path: z.string() }),
  batch: RefSchema,
  parent: RefSchema.nullable(),
  files: z.record(z.string(), RefSchema),
  metrics: UpdateMetricsSchema,
  /** The update's per-token record (`cm2.tokens` v1, `ui/data.ts` `TokenRecord`); absent in older checkpoints. */
  tokens: RefSchema.optional(),
  createdAt: z.string(),
}).passthrough();

export type CheckpointManifest = z.infer<typeof CheckpointManifestSchema>;
