/**
 * Named timeout and retry presets for activities (`LLM`, `STORE`, `TRAIN`, `PUBLISH`, `BULK`, and the
 * local-activity `LOCAL_STORE`). Workflows
 * pick a preset; they never spell out timeouts inline. Every preset that runs on the orchestrator
 * worker has a heartbeat timeout: its activities heartbeat every second (`activities/mod.ts`), so a
 * killed worker's activities are retried elsewhere within seconds, not minutes.
 *
 * @module
 */
import type { ActivityOptions, LocalActivityOptions } from "@temporalio/workflow";

/** Failure types (from `core/llm_types.ts`) that no retry can fix. */
export const NON_RETRYABLE = ["BadRequest", "Refusal", "SchemaViolation", "Truncated", "InvalidInput"];

/** One LLM call: retried with backoff on 429/5xx/timeouts (Retry-After honoured by the activity). */
export const LLM: ActivityOptions = {
  startToCloseTimeout: "10 minutes",
  heartbeatTimeout: "10 seconds",
  retry: {
    initialInterval: "1 second",
    backoffCoefficient: 2,
    maximumInterval: "1 minute",
    maximumAttempts: 8,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
};

/** Pure work over stored state (parse, replay, rewards): fast, retried a few times. */
export const STORE: ActivityOptions = {
  startToCloseTimeout: "2 minutes",
  heartbeatTimeout: "10 seconds",
  retry: { initialInterval: "500 milliseconds", maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
};

/** One GPU policy update: long, heartbeating, idempotent per (run, iteration). */
export const TRAIN: ActivityOptions = {
  startToCloseTimeout: "2 hours",
  heartbeatTimeout: "5 minutes",
  retry: { initialInterval: "5 seconds", maximumAttempts: 5, nonRetryableErrorTypes: ["InvalidBatch"] },
};

/** Making a new adapter live on the policy server and verifying it. */
export const PUBLISH: ActivityOptions = {
  startToCloseTimeout: "5 minutes",
  heartbeatTimeout: "10 seconds",
  retry: { initialInterval: "2 seconds", maximumAttempts: 10, nonRetryableErrorTypes: NON_RETRYABLE },
};

/**
 * Pure work over stored state between model calls (start, merge simulated results or a judge round,
 * record a failure), run as a local activity inside the workflow task: no task-queue round trip. Local
 * activities cannot heartbeat; a lost worker shows as a workflow task timeout (10 s) instead.
 */
export const LOCAL_STORE: LocalActivityOptions = {
  startToCloseTimeout: "2 minutes",
  retry: { initialInterval: "500 milliseconds", maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
};

/** One pass over a whole dataset in the store (e.g. assembling a labeled dataset): long, heartbeating. */
export const BULK: ActivityOptions = {
  startToCloseTimeout: "1 hour",
  heartbeatTimeout: "10 seconds",
  retry: { initialInterval: "1 second", maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
};
