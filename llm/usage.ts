/**
 * Per-role accounting of model calls: successful calls, failures by type, prompt and completion
 * tokens, latency (sum and max) and, where prices are configured, cost. Ledgers are plain JSON
 * objects, so activities can return them and workflows can sum them with {@linkcode mergeUsage}.
 *
 * @example Meter a model and report
 * ```ts
 * const ledger: UsageLedger = {};
 * const judge = meterModel(createChatModel(opts), ledger, { inputPer1M: 0.1, outputPer1M: 0.4 });
 * await judge.complete(req);
 * ledger.judge?.calls; // 1
 * ```
 *
 * @module
 */
import {
  type ChatModel,
  type ChatRequest,
  type ChatResult,
  type FailureType,
  LlmError,
  type Role,
  type Usage,
} from "../core/llm_types.ts";

/** Price of a model in US dollars per million tokens. */
export interface Prices {
  inputPer1M: number;
  outputPer1M: number;
}

/** Accounting of one role. `calls` counts successful calls; failed ones count only in `failures`. */
export interface RoleUsage {
  calls: number;
  failures: Partial<Record<FailureType, number>>;
  promptTokens: number;
  completionTokens: number;
  latencyMsSum: number;
  latencyMsMax: number;
  /** Cost in US dollars of the calls made with configured prices. */
  costUsd: number;
}

/** Accounting of every role that made calls. */
export type UsageLedger = Partial<Record<Role, RoleUsage>>;

/** A role's accounting with nothing recorded. */
export function emptyRoleUsage(): RoleUsage {
  return {
    calls: 0,
    failures: {},
    promptTokens: 0,
    completionTokens: 0,
    latencyMsSum: 0,
    latencyMsMax: 0,
    costUsd: 0,
  };
}

/** Cost in US dollars of one call's tokens. */
export function costOf(usage: Pick<Usage, "promptTokens" | "completionTokens">, prices: Prices): number {
  return (usage.promptTokens * prices.inputPer1M + usage.completionTokens * prices.outputPer1M) / 1_000_000;
}

/** Record one successful call of `role` into `ledger` (mutates and returns it). */
export function recordCall(ledger: UsageLedger, role: Role, usage: Usage, prices?: Prices): UsageLedger {
  const r = (ledger[role] ??= emptyRoleUsage());
  r.calls += 1;
  r.promptTokens += usage.promptTokens;
  r.completionTokens += usage.completionTokens;
  r.latencyMsSum += usage.latencyMs;
  r.latencyMsMax = Math.max(r.latencyMsMax, usage.latencyMs);
  if (prices) r.costUsd += costOf(usage, prices);
  return ledger;
}

/** Record one failed call of `role` into `ledger` (mutates and returns it). */
export function recordFailure(ledger: UsageLedger, role: Role, type: FailureType): UsageLedger {
  const r = (ledger[role] ??= emptyRoleUsage());
  r.failures[type] = (r.failures[type] ?? 0) + 1;
  return ledger;
}

/** Sum two roles' accounting into a new object. */
export function mergeRoleUsage(a: RoleUsage, b: RoleUsage): RoleUsage {
  const failures: Partial<Record<FailureType, number>> = { ...a.failures };
  for (const [type, n] of Object.entries(b.failures) as [FailureType, number][]) {
    failures[type] = (failures[type] ?? 0) + n;
  }
  return {
    calls: a.calls + b.calls,
    failures,
    promptTokens: a.promptTokens + b.promptTokens,
    completionTokens: a.completionTokens + b.completionTokens,
    latencyMsSum: a.latencyMsSum + b.latencyMsSum,
    latencyMsMax: Math.max(a.latencyMsMax, b.latencyMsMax),
    costUsd: a.costUsd + b.costUsd,
  };
}

/** Sum any number of ledgers into a new one; inputs are not changed. */
export function mergeUsage(...ledgers: UsageLedger[]): UsageLedger {
  const out: UsageLedger = {};
  for (const ledger of ledgers) {
    for (const [role, usage] of Object.entries(ledger) as [Role, RoleUsage | undefined][]) {
      if (!usage) continue;
      const prev = out[role];
      out[role] = mergeRoleUsage(prev ?? emptyRoleUsage(), usage);
    }
  }
  return out;
}

/** Mean latency of a role's successful calls in milliseconds (0 without calls). */
export function meanLatencyMs(usage: RoleUsage): number {
  return usage.calls === 0 ? 0 : usage.latencyMsSum / usage.calls;
}

/**
 * Wrap a model so that every call is recorded into `ledger` under the model's role: results with
 * {@linkcode recordCall}, {@linkcode LlmError}s with {@linkcode recordFailure} (and rethrown).
 */
export function meterModel(model: ChatModel, ledger: UsageLedger, prices?: Prices): ChatModel {
  async function complete(req: ChatRequest): Promise<ChatResult> {
    try {
      const result = await model.complete(req);
      recordCall(ledger, model.role, result.usage, prices);
      return result;
    } catch (err) {
      if (err instanceof LlmError) recordFailure(ledger, model.role, err.type);
      throw err;
    }
  }
  return { role: model.role, model: model.model, complete };
}
