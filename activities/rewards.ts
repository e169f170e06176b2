/**
 * Reward activities: scoring an iteration's groups (the math is `core/batch.ts` and `core/rewards.ts`), the
 * training batch for the trainer, and the iteration's metrics under `runs/<run>/metrics/<kind>-<n>`.
 *
 * @module
 */
import type { RunConfig } from "../core/config.ts";
import { scoreGroups } from "../core/batch.ts";
import { storeNames } from "../core/names.ts";
import { rewardOptionsOf } from "../core/rewards.ts";
import type { Batch, UpdateMetrics } from "../core/trainer_contract.ts";
import type { CachedStore } from "../store/cached.ts";
import { EpisodeStates } from "../store/episodes.ts";
import { type ArtifactStore, putJson, type Ref } from "../store/mod.ts";

/** Builds the reward activities. */
export function createRewardActivities(deps: { store: ArtifactStore; cached: CachedStore }) {
  const { store, cached } = deps;
  const states = new EpisodeStates(cached);
  const cfg = (ref: Ref) => cached.memo<RunConfig>(ref);
  const loadState = async (ref: Ref) => (await states.load(ref)).state;
  return {
    /**
     * Rewards and advantages per group (core/rewards.ts), the training batch for the trainer, and
     * the iteration's reward metrics.
     */
    async computeRewards(input: {
      configRef: Ref;
      runName: string;
      iteration: number;
      datasetRef: Ref;
      groups: { taskIndex: number; recordIndex: number; episodes: Ref[] }[];
      validation: boolean;
    }) {
      const config = await cfg(input.configRef);
      const options = rewardOptionsOf(config.cm2);
      const scored = scoreGroups(
        await Promise.all(input.groups.map(async (g) => ({
          taskIndex: g.taskIndex,
          recordIndex: g.recordIndex,
          episodes: await Promise.all(g.episodes.map(async (ref) => ({
            id: ref.sha256.slice(0, 16),
            stateRef: ref,
            state: await loadState(ref),
          }))),
        }))),
        options,
      );
      const rewardsRef = await putJson(store, {
        schema: "cm2.rewards/v1",
        runName: input.runName,
        iteration: input.iteration,
        options,
        groups: scored.groups,
      });
      // No sample (every episode failed and was dropped): no update this iteration, rather than an empty batch
      // the trainer must refuse.
      let batchRef: Ref | null = null;
      if (!input.validation && scored.samples.length > 0) {
        const batch: Batch = {
          schema: "cm2.batch/v1",
          runId: input.runName,
          iteration: input.iteration,
          samples: scored.samples,
        };
        batchRef = await putJson(store, batch);
      }
      // Model faults the episode activities recorded (each a failed call that was retried), by type.
      const modelFaults: Record<string, number> = {};
      const kind = input.validation ? "val" : "it";
      for (const g of input.groups) {
        const group = storeNames.group(input.runName, kind, input.iteration, g.taskIndex);
        for (const name of await store.listNames(`${group}/faults/`)) {
          const ref = await store.getName(name);
          const type = ref ? (await cached.readJson<{ type?: string }>(ref)).type ?? "unknown" : "unknown";
          modelFaults[type] = (modelFaults[type] ?? 0) + 1;
        }
      }
      return {
        rewardsRef,
        batchRef,
        modelFaults,
        meanReward: scored.meanReward,
        itemPassRate: scored.itemPassRate,
        judgeCalls: scored.judgeCalls,
        checkedVerdicts: scored.checkedVerdicts,
        judgeRetries: scored.judgeRetries,
        simulatorCalls: scored.simulatorCalls,
        replayHits: scored.replayHits,
        samples: scored.samples.length,
      };
    },

    /** Stores the iteration's metrics and points `runs/<name>/metrics/it-<n>` at them. */
    async recordMetrics(input: {
      runName: string;
      summary: Record<string, unknown> & { iteration: number; validation: boolean };
      rewardsRef: Ref;
      /** The batch the update trained on (absent: validation, no sample, or a history from before it). */
      batchRef?: Ref;
      /** The config this iteration ran with (absent in histories from before it was recorded). */
      configRef?: Ref;
      updateMetrics: UpdateMetrics | null;
    }): Promise<{ metricsRef: Ref }> {
      const metricsRef = await putJson(store, {
        schema: "cm2.metrics/v1",
        ...input.summary,
        rewards: input.rewardsRef,
        ...(input.batchRef ? { batch: input.batchRef } : {}),
        ...(input.configRef ? { config: input.configRef } : {}),
        update: input.updateMetrics,
      });
      const kind = input.summary.validation ? "val" : "it";
      await store.setName(storeNames.metrics(input.runName, kind, input.summary.iteration), metricsRef);
      return { metricsRef };
    },
  };
}
