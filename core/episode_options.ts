/**
 * The episode engine's options read from a run config: the limits, the judge settings, the simulator and the
 * unfinished-turn rule of the reward preset. One reading, used by the activities, the plain loop's benchmark
 * and the tests.
 *
 * @module
 */
import type { RunConfig } from "./config.ts";
import type { EpisodeOptions } from "./episode.ts";
import { resolveRewardOptions, rewardOptionsOf } from "./rewards.ts";

/** Episode options from the run config. */
export function episodeOptionsOf(config: RunConfig): EpisodeOptions {
  const c = config.cm2;
  const reward = resolveRewardOptions(rewardOptionsOf(c));
  return {
    maxAssistantSteps: c.limits.maxAssistantSteps,
    maxUserTurns: c.limits.maxUserTurns,
    maxContextTokens: c.limits.maxContextTokens,
    ...(config.models.policy.sampling.max_tokens
      ? { maxResponseTokens: config.models.policy.sampling.max_tokens }
      : {}),
    unfinishedTurn: reward.unfinishedTurn,
    judge: { mode: c.judge.mode, votes: c.judge.votes, itemsPerCall: c.judge.itemsPerCall },
    simulator: { replayScope: c.simulator.replayScope, cache: c.simulator.cache },
  };
}
