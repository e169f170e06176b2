/**
 * From an iteration's finished episodes to what the trainer and the run viewer need, purely: each group's
 * CM2 advantages (`rewards.ts`), the trainer batch's samples (the episodes a group did not exclude, with
 * their per-message advantages and the policy's own completion token ids), the per-group record of rewards,
 * and the iteration's summary numbers. The activity only loads the states and stores the results.
 *
 * @module
 */
import type { EpisodeState } from "./episode.ts";
import { episodeVerdicts } from "./episode_judge.ts";
import {
  computeAdvantages,
  type EpisodeAdvantages,
  type GroupAdvantages,
  itemPassRate,
  type RewardOptionsInput,
} from "./rewards.ts";
import type { BatchSample } from "./trainer_contract.ts";
import type { ChecklistVariant } from "./records.ts";

/** One group's finished episodes, in episode order; `id` names an episode in the batch. */
export interface ScoredGroupInput<R> {
  taskIndex: number;
  recordIndex: number;
  episodes: { id: string; stateRef: R; state: EpisodeState }[];
}

/** What `scoreGroups` returns: the batch samples, the per-group rewards record and the summary. */
export interface ScoredIteration<R> {
  samples: BatchSample[];
  groups: {
    taskIndex: number;
    recordIndex: number;
    uuid: string;
    episodes: {
      state: R;
      ok: boolean;
      endReason: string | null;
      reward: number;
      turnScores: readonly number[];
      /** What each item paid, per turn (checklist variant 0: `EpisodeAdvantages.items`). */
      items: EpisodeAdvantages["items"];
      excluded: boolean;
      steps: number;
    }[];
    stats: GroupAdvantages["stats"];
  }[];
  /** Mean reward over the episodes whose verdicts are usable (not failed). */
  meanReward: number;
  /** Share of reached checklist items that passed. */
  itemPassRate: number;
  judgeCalls: number;
  /** Verdicts a program check answered (no judge call). */
  checkedVerdicts: number;
  /** Judge answers that did not parse and were asked again. */
  judgeRetries: number;
  simulatorCalls: number;
  replayHits: number;
}

/** The batch sample of one episode: its transcript, advantages and the completion ids the policy sampled. */
export function batchSample(
  id: string,
  groupId: string,
  s: EpisodeState,
  advantages: readonly { messageIndex: number; advantage: number }[],
): BatchSample {
  const completions = s.meta.flatMap((m, i) => m.completion ? [{ messageIndex: i, ...m.completion }] : []);
  const sample: BatchSample = {
    episodeId: id,
    groupId,
    tools: s.tools as unknown as Record<string, unknown>[],
    messages: s.messages.map((m) => ({
      role: m.role,
      content: m.content,
      ...(m.tool_calls && m.tool_calls.length > 0 ? { tool_calls: m.tool_calls } : {}),
      ...(m.tool_call_id ? { tool_call_id: m.tool_call_id } : {}),
    })),
    advantages: advantages.map((x) => ({ ...x })),
    ...(completions.length > 0 ? { completions } : {}),
  };
  return sample;
}

/**
 * A group's advantages under each checklist variant the episodes were judged on (`options.variants`, at most the
 * record's), averaged: reward, turn scores and every step's advantage are the mean over variants (CM2: the sum
 * over variants / V). With one variant this is that variant's result.
 */
export function variantAdvantages(
  states: readonly EpisodeState[],
  options: RewardOptionsInput,
): {
  adv: GroupAdvantages;
  verdicts: ReturnType<typeof episodeVerdicts>[];
  variants: { checklist: ChecklistVariant; verdicts: ReturnType<typeof episodeVerdicts>[] }[];
} {
  const record = states[0]!.record;
  const count = Math.max(1, Math.min(states[0]!.options.variants, record.checklists.length));
  const variants = Array.from({ length: count }, (_, v) => ({
    checklist: record.checklists[v]!,
    verdicts: states.map((s) => episodeVerdicts(s, v)),
  }));
  const each = variants.map((x) =>
    computeAdvantages({ checklist: x.checklist, episodes: x.verdicts }, options)
  );
  const first = each[0]!;
  if (count === 1) return { adv: first, verdicts: variants[0]!.verdicts, variants };
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const adv: GroupAdvantages = {
    ...first,
    episodes: first.episodes.map((e, i) => ({
      ...e,
      reward: mean(each.map((a) => a.episodes[i]!.reward)),
      turnScores: e.turnScores.map((_, t) => mean(each.map((a) => a.episodes[i]!.turnScores[t] ?? 0))),
      advantages: e.advantages.map((s, k) => ({
        ...s,
        advantage: mean(each.map((a) => a.episodes[i]!.advantages[k]?.advantage ?? 0)),
      })),
    })),
  };
  return { adv, verdicts: variants[0]!.verdicts, variants };
}

/** Scores every group of an iteration (averaged over its checklist variants) under `options`. */
export function scoreGroups<R>(
  groups: ScoredGroupInput<R>[],
  options: RewardOptionsInput,
): ScoredIteration<R> {
  const out: ScoredIteration<R> = {
    samples: [],
    groups: [],
    meanReward: 0,
    itemPassRate: 0,
    judgeCalls: 0,
    checkedVerdicts: 0,
    judgeRetries: 0,
    simulatorCalls: 0,
    replayHits: 0,
  };
  let rewardSum = 0;
  let rewardCount = 0;
  let passed = 0;
  let reached = 0;
  for (const group of groups) {
    const states = group.episodes.map((e) => e.state);
    const { adv, verdicts, variants } = variantAdvantages(states, options);
    for (const { checklist, verdicts: vv } of variants) {
      for (const row of itemPassRate(checklist, vv)) {
        for (const item of row) {
          passed += item.passed;
          reached += item.reached;
        }
      }
    }
    states.forEach((s, e) => {
      out.judgeCalls += s.metrics.judgeVerdicts;
      out.checkedVerdicts += s.metrics.judgeCellsChecked ?? 0;
      out.judgeRetries += s.metrics.judgeRetries ?? 0;
      out.simulatorCalls += s.metrics.simulated;
      out.replayHits += s.metrics.replayHits;
      const a = adv.episodes[e]!;
      if (verdicts[e]!.ok) {
        rewardSum += a.reward;
        rewardCount++;
      }
      if (!a.excluded) {
        out.samples.push(batchSample(group.episodes[e]!.id, `task-${group.taskIndex}`, s, a.advantages));
      }
    });
    out.groups.push({
      taskIndex: group.taskIndex,
      recordIndex: group.recordIndex,
      uuid: states[0]!.record.uuid,
      episodes: states.map((s, e) => ({
        state: group.episodes[e]!.stateRef,
        ok: s.end?.ok ?? false,
        endReason: s.end?.reason ?? null,
        reward: adv.episodes[e]!.reward,
        turnScores: adv.episodes[e]!.turnScores,
        items: adv.episodes[e]!.items,
        excluded: adv.episodes[e]!.excluded,
        steps: s.assistantSteps,
      })),
      stats: adv.stats,
    });
  }
  out.meanReward = rewardCount > 0 ? rewardSum / rewardCount : 0;
  out.itemPassRate = reached > 0 ? passed / reached : 0;
  return out;
}
