/**
 * What the orchestrator's activity modules share (neither owns it): the model factory type, how a model
 * failure becomes an activity failure, and hashing.
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import { createHash } from "node:crypto";
import type { RunConfig } from "../core/config.ts";
import { type ChatModel, LlmError, type Role } from "../core/llm_types.ts";
import type { Prices } from "../llm/usage.ts";

/** Builds the model client of a role from the run config (keys from the environment only). */
export type ModelFactory = (role: Role, config: RunConfig) => ChatModel;

/** Hex SHA-256 of a string. */
export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Turns a model failure into an activity failure: retryable ones carry Retry-After as the next delay. */
export function toFailure(err: unknown): never {
  if (err instanceof LlmError) {
    if (err.retryable) {
      throw ApplicationFailure.create({
        type: err.type,
        message: err.message,
        ...(err.retryAfterMs !== undefined ? { nextRetryDelay: err.retryAfterMs } : {}),
      });
    }
    throw ApplicationFailure.nonRetryable(err.message, err.type);
  }
  throw err;
}

/** The labeler role's prices in the form `costOf` takes, or undefined when the config sets none. */
export function labelerPrices(config: RunConfig): Prices | undefined {
  const p = config.models.labeler.prices;
  return p ? { inputPer1M: p.input, outputPer1M: p.output } : undefined;
}
