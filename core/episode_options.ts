/**
 * The episode engine's options: what they are and their defaults ({@linkcode resolveEpisodeOptions}), and their
 * one reading from a run config ({@linkcode episodeOptionsOf}: the limits, the judge settings, the simulator and
 * the unfinished-turn rule of the reward preset), used by the activities, the plain loop's benchmark and tests.
 *
 * @module
 */
import type { RunConfig } from "./config.ts";
import type { JudgeMode, SkipBasis } from "./judge.ts";
import type { Sampling } from "./llm_types.ts";
import { resolveRewardOptions, type RewardOptions, rewardOptionsOf } from "./rewards.ts";
import type { SimulatorOptions } from "./simulator.ts";

/** Judge settings that shape the state machine. */
export interface EpisodeJudgeOptions {
  /** `exhaustive` (default, the reference) or `incremental`; see `core/judge.ts`. */
  mode?: JudgeMode;
  /**
   * Skip rule of `incremental` mode (default `completed`, safe for every reward level and preset; a run
   * config gets the widest rule that is safe for its reward options, see {@linkcode skipBasisFor}).
   */
  skipBasis?: SkipBasis;
  /** Votes per cell, majority wins, ties false (default 1). */
  votes?: number;
  /** Items per judge call (default 1, the reference); more batches items of one step. */
  itemsPerCall?: number;
  /**
   * Answer `false` without a judge call where the item's focus part is absent from the step's window (default
   * true): no tool call yet for `assistant.tool_calls`, no tool result yet for `tool.content`, only tool-calling
   * steps so far for `assistant.content.user_visible_reply`. The judge prompt makes presence of the focus part a
   * condition of `true`, so this is the answer a careful judge gives. Beyond CM2.
   */
  skipAbsentFocus?: boolean;
}

/** Options of {@linkcode startEpisode}; every field has a default. */
export interface EpisodeOptions {
  /** Most assistant steps over the whole episode (default 30). */
  maxAssistantSteps?: number;
  /** Most judged user turns (default 30). */
  maxUserTurns?: number;
  /** Context budget in tokens (default 12 000); see {@linkcode estimateTokens}. */
  maxContextTokens?: number;
  /** Most tokens of one policy step (default 8 000); capped by what is left of the context budget. */
  maxResponseTokens?: number;
  /**
   * Most tokens after the first prompt over the whole episode (default 8 000, the released run's response
   * length): past it the episode ends with `limit-response`.
   */
  maxEpisodeResponseTokens?: number;
  /** End the episode when a tool result holds `error_tool_call` (default true, the reference). */
  endOnToolError?: boolean;
  /** Checklist variants used, from the first (default 1). */
  variants?: number;
  /** Unfinished last turn: judge its steps (default) or give it no credit without judging. */
  unfinishedTurn?: "judge" | "no-credit";
  /** Sampling of policy requests (absent fields: the role's defaults). */
  policySampling?: Sampling;
  /** Ask the policy endpoint for completion token ids and logprobs. */
  wantTokens?: boolean;
  judge?: EpisodeJudgeOptions;
  simulator?: SimulatorOptions;
}

/** {@linkcode EpisodeOptions} with every default applied. */
export interface ResolvedEpisodeOptions {
  maxAssistantSteps: number;
  maxUserTurns: number;
  maxContextTokens: number;
  maxResponseTokens: number;
  maxEpisodeResponseTokens: number;
  endOnToolError: boolean;
  variants: number;
  unfinishedTurn: "judge" | "no-credit";
  policySampling: Sampling;
  wantTokens: boolean;
  judge: Required<EpisodeJudgeOptions>;
  simulator: SimulatorOptions;
}

/** Apply the defaults to {@linkcode EpisodeOptions}. */
export function resolveEpisodeOptions(opts: EpisodeOptions = {}): ResolvedEpisodeOptions {
  const positive = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`Episode option ${name} is ${v}, expected an integer >= 1`);
    }
    return v;
  };
  return {
    maxAssistantSteps: positive("maxAssistantSteps", opts.maxAssistantSteps ?? 30),
    maxUserTurns: positive("maxUserTurns", opts.maxUserTurns ?? 30),
    maxContextTokens: positive("maxContextTokens", opts.maxContextTokens ?? 12_000),
    maxResponseTokens: positive("maxResponseTokens", opts.maxResponseTokens ?? 8_000),
    maxEpisodeResponseTokens: positive("maxEpisodeResponseTokens", opts.maxEpisodeResponseTokens ?? 8_000),
    endOnToolError: opts.endOnToolError ?? true,
    variants: positive("variants", opts.variants ?? 1),
    unfinishedTurn: opts.unfinishedTurn ?? "judge",
    policySampling: { ...opts.policySampling },
    wantTokens: opts.wantTokens ?? false,
    judge: {
      mode: opts.judge?.mode ?? "exhaustive",
      skipBasis: opts.judge?.skipBasis ?? "completed",
      votes: positive("judge.votes", opts.judge?.votes ?? 1),
      itemsPerCall: positive("judge.itemsPerCall", opts.judge?.itemsPerCall ?? 1),
      skipAbsentFocus: opts.judge?.skipAbsentFocus ?? true,
    },
    simulator: { ...opts.simulator },
  };
}

/**
 * The widest skip rule of `incremental` judging that leaves the given rewards unchanged (`core/judge.ts`):
 * `paid` when dependencies are read from the pre-step verdicts, `completed` otherwise.
 */
export function skipBasisFor(reward: Pick<RewardOptions, "dependencyTiming">): SkipBasis {
  return reward.dependencyTiming === "pre-step-verdicts" ? "paid" : "completed";
}

/** Episode options from the run config. */
export function episodeOptionsOf(config: RunConfig): EpisodeOptions {
  const c = config.cm2;
  const reward = resolveRewardOptions(rewardOptionsOf(c));
  return {
    maxAssistantSteps: c.limits.maxAssistantSteps,
    maxUserTurns: c.limits.maxUserTurns,
    maxContextTokens: c.limits.maxContextTokens,
    maxEpisodeResponseTokens: c.limits.maxEpisodeResponseTokens,
    ...(config.models.policy.sampling.max_tokens
      ? { maxResponseTokens: config.models.policy.sampling.max_tokens }
      : {}),
    unfinishedTurn: reward.unfinishedTurn,
    // rollout correction needs the serving engine's log-probs of the sampled tokens
    wantTokens: config.trainer.rolloutIsCap !== null,
    judge: {
      mode: c.judge.mode,
      skipBasis: skipBasisFor(reward),
      votes: c.judge.votes,
      itemsPerCall: c.judge.itemsPerCall,
      skipAbsentFocus: c.judge.skipAbsentFocus,
    },
    simulator: { replayScope: c.simulator.replayScope, cache: c.simulator.cache },
  };
}
