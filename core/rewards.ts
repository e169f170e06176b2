/**
 * Checklist rewards and advantages (CM2, `docs/cm2-reference.md` §5 and §8).
 *
 * Pure functions, no I/O: the episode engine hands in the judged verdict matrices of one task's group of
 * rollouts, and gets back one reward and one advantage per assistant message of each rollout, ready for
 * the trainer. Three levels (trajectory, turn, step) and three named presets (`reference`, `paper`,
 * `fixed`) are supported; every switch of a preset can be overridden one by one.
 *
 * Terms used throughout:
 * - A **step** is one assistant message (parallel tool calls in one message are one step). Its verdict
 *   row `sat[c]` is the judge's answer for item c with the turn prefix up to and including that step and
 *   its tool results as context.
 * - An item is **completed** at the first step where it is judged true while its dependencies already
 *   hold. When a dependency "holds" is set by {@link RewardSwitches.dependencyTiming}.
 * - An item is **eligible** at step s when all its dependencies were completed at earlier steps and the
 *   item itself was not (CM2 eq. 8–10, `E_s`).
 * - A turn is **reached** when it has at least one judged step; `L` is the number of reached turns and
 *   `T_ref` the number of reference turns (the checklist's turn count).
 *
 * @module
 */

/**
 * One checklist item as the reward math needs it. Structurally a subset of the stored checklist item of
 * `core/records.ts`, so stored items can be passed as they are.
 */
export interface RewardItem {
  /** Item id, unique within its turn (by convention `C0`, `C1`, … restarting each turn). */
  readonly id: string;
  /** Weight of the item; the weights of one turn sum to 1 (± 1e-6). */
  readonly weight: number;
  /** Ids of the items of the same turn that must be completed before this one can count. */
  readonly dependence: readonly string[];
  /** Strictness: the turn passes only if this item was judged true at some step of the turn. */
  readonly required_for_next_turn: boolean;
}

/** The items of one reference turn. */
export type TurnItems = readonly RewardItem[];

/** One checklist variant: one item array per reference turn (`T_ref` = its length). */
export type RewardChecklist = readonly TurnItems[];

/** The judge's verdicts for one assistant step. */
export interface StepVerdicts {
  /** Index of this assistant message in the episode transcript; echoed back in the advantages. */
  readonly messageIndex: number;
  /** `sat[c]`: was item c (index into the turn's items) satisfied at this step. */
  readonly sat: readonly boolean[];
}

/** One reached turn of an episode. */
export interface TurnVerdicts {
  /** The turn's assistant steps, in order. */
  readonly steps: readonly StepVerdicts[];
  /** The turn ended with a reply; false for an unfinished last turn (tool error, length or step limit). */
  readonly complete: boolean;
}

/** One rollout (episode) of a task. */
export interface EpisodeVerdicts {
  /**
   * False when the tool simulator or a judge call failed. The data of a failed episode may be partial and
   * is never read, except for the `messageIndex` of its steps.
   */
  readonly ok: boolean;
  /** The reached turns, in order (at most `T_ref`). Only the last one may be unfinished or stepless. */
  readonly turns: readonly TurnVerdicts[];
}

/** The G rollouts of one task together with the task's checklist. */
export interface RewardGroup {
  /** One checklist variant; `T_ref` is its length. */
  readonly checklist: RewardChecklist;
  /** The G episodes of the task. */
  readonly episodes: readonly EpisodeVerdicts[];
}

/** The reward levels; the config's `advantageLevel` enum is made from this list. */
export const REWARD_LEVELS = ["trajectory", "turn", "step"] as const;
/** Where rewards are assigned: one advantage per episode, per (episode, turn) or per (episode, step). */
export type RewardLevel = (typeof REWARD_LEVELS)[number];

/** The preset names, in the order of {@link REWARD_PRESETS}; the config's `preset` enum is made from it. */
export const REWARD_PRESET_NAMES = ["paper", "reference", "fixed"] as const;
/** Named switch sets; see {@link REWARD_PRESETS}. */
export type RewardPreset = (typeof REWARD_PRESET_NAMES)[number];

/**
 * The semantic switches. Each preset sets all of them; each can be overridden on its own.
 */
export interface RewardSwitches {
  /**
   * Advantage scale. `"std"`: divide by the unbiased standard deviation of the baseline population
   * plus 1e-6 (as `torch.std(...) + 1e-6` in verl); the std of fewer than 2 values is taken as 0. `1`: no
   * scaling (CM2's final choice).
   */
  readonly fnorm: "std" | 1;
  /**
   * Episodes with `ok=false`. `"keep-zero"`: they stay in the loss; at trajectory level their reward 0
   * enters the group mean and their advantage is `-mean` (reference); at turn and step level they are left
   * out of the statistics and get advantage 0 (reference). `"drop"`: left out of every statistic, advantage
   * 0, and flagged `excluded` so that the trainer masks them out of the loss.
   */
  readonly failedEpisodes: "keep-zero" | "drop";
  /**
   * Turn and step levels: a turn (or item) needs strictly more than this many episodes in its baseline
   * population, otherwise its advantage is 0 (reference: 4, i.e. at least 5 episodes). Not used at
   * trajectory level.
   */
  readonly minGroupSupport: number;
  /** Step level: an item completed `d` steps after an eligible step credits that step with `eta^d` (eq. 3). */
  readonly eta: number;
  /**
   * An unfinished last turn (`complete=false`). `"no-credit"`: its verdicts are all read as false, which
   * gives the effect of the reference's post-hoc judging bug (§4.5); the turn still counts as reached.
   * `"judge"`: its judged steps are used as they are.
   */
  readonly unfinishedTurn: "no-credit" | "judge";
  /** Step level: divide `A_{i,s}` by the summed weight of the step's eligible items (eq. 10). */
  readonly divideBySumWeights: boolean;
  /** Trajectory reward divisor: `T_ref` (reference code) or the number of reached turns `L` (eq. 4). */
  readonly trajectoryDivisor: "reference-turns" | "reached-turns";
  /**
   * Trajectory and turn scores: `true` credits an item only when it is completed with its dependencies
   * holding (eq. 2); `false` credits it when it is judged true at any step of the turn (reference OR).
   * The step level always respects dependencies.
   */
  readonly dependenciesAtTurnLevel: boolean;
  /**
   * When a dependency counts as holding for completion. `"before-step"`: it was completed at an earlier
   * step (eq. 2's pre-step state). `"item-order"`: also when it was completed at the same step and comes
   * earlier in item order (the reference's walk; an item completed this way counts in the step-level
   * baseline but never receives a step advantage, §5.7). Eligibility (`E_s`) always uses earlier steps.
   */
  readonly dependencyTiming: "before-step" | "item-order";
  /**
   * Baseline population at turn and step level. `"all"`: every (non-failed) episode of the group, an
   * unreached turn or item scoring 0 (eq. 7–8). `"reached"`: turn level, the episodes that reached the turn;
   * step level, the episodes in which the item was eligible at some step (reference).
   */
  readonly baselinePopulation: "all" | "reached";
  /**
   * Step level: `"per-item"` divides each item's term by the Fnorm of that item's scores (eq. 9);
   * `"none"` never scales step advantages, whatever `fnorm` says (reference).
   */
  readonly stepFnorm: "per-item" | "none";
  /**
   * Trajectory level, a group whose population is a single episode. `"verl"`: mean 0 and scale 1, so the
   * advantage is the reward itself (verl's GRPO). `"zero"`: the plain formula, which gives 0.
   */
  readonly singletonGroup: "verl" | "zero";
}

/** Fully resolved options: the level, the preset it started from, and every switch. */
export interface RewardOptions extends RewardSwitches {
  /** Reward level (default `"trajectory"`, CM2's final choice). */
  readonly level: RewardLevel;
  /** Preset the switches start from (default `"fixed"`). */
  readonly preset: RewardPreset;
}

/** Options as a caller passes them: any subset; `undefined` fields are ignored. */
export type RewardOptionsInput = { readonly [K in keyof RewardOptions]?: RewardOptions[K] | undefined };

/**
 * The three presets. `level` defaults to `trajectory` for all of them and `fnorm` is 1 in all of them (CM2's
 * final configuration).
 *
 * | switch                    | reference         | paper          | fixed             |
 * | ------------------------- | ----------------- | -------------- | ----------------- |
 * | `fnorm`                   | 1                 | 1              | 1                 |
 * | `failedEpisodes`          | `keep-zero`       | `drop`         | `drop`            |
 * | `minGroupSupport`         | 4 (> 4 needed)    | 0              | 4                 |
 * | `eta`                     | 1                 | 1              | 1                 |
 * | `unfinishedTurn`          | `no-credit` (bug) | `judge`        | `judge`           |
 * | `divideBySumWeights`      | false             | true (eq. 10)  | false             |
 * | `trajectoryDivisor`       | `reference-turns` | `reached-turns` | `reference-turns` |
 * | `dependenciesAtTurnLevel` | false (OR)        | true (eq. 2)   | true              |
 * | `dependencyTiming`        | `item-order`      | `before-step`  | `before-step`     |
 * | `baselinePopulation`      | `reached`         | `all`          | `reached`         |
 * | `stepFnorm`               | `none`            | `per-item`     | `none`            |
 * | `singletonGroup`          | `verl`            | `zero`         | `zero`            |
 *
 * - `reference`: what the released code does (§5): OR over steps, `T_ref` divisor, failed episodes kept
 *   with reward 0 in the GRPO mean, `> 4` holders or eligible episodes, eligibility-conditioned step
 *   baseline without Fnorm or Σw division, unfinished last turn without credit.
 * - `paper`: eq. 2–10 as written: completion needs dependencies from earlier steps, backfill, means and
 *   Fnorm over the whole group, division by the reached turns `L` and by Σw. The paper does not say how
 *   failed episodes are treated; they are dropped.
 * - `fixed`: `reference` with its bugs fixed: unfinished turns judged, failed episodes dropped from the
 *   baseline and the loss, dependencies respected everywhere with one consistent timing (so that every
 *   completed item also gets its step advantage), and no verl singleton special case.
 */
export const REWARD_PRESETS: Readonly<Record<RewardPreset, Readonly<RewardSwitches>>> = Object.freeze({
  reference: Object.freeze({
    fnorm: 1,
    failedEpisodes: "keep-zero",
    minGroupSupport: 4,
    eta: 1,
    unfinishedTurn: "no-credit",
    divideBySumWeights: false,
    trajectoryDivisor: "reference-turns",
    dependenciesAtTurnLevel: false,
    dependencyTiming: "item-order",
    baselinePopulation: "reached",
    stepFnorm: "none",
    singletonGroup: "verl",
  }),
  paper: Object.freeze({
    fnorm: 1,
    failedEpisodes: "drop",
    minGroupSupport: 0,
    eta: 1,
    unfinishedTurn: "judge",
    divideBySumWeights: true,
    trajectoryDivisor: "reached-turns",
    dependenciesAtTurnLevel: true,
    dependencyTiming: "before-step",
    baselinePopulation: "all",
    stepFnorm: "per-item",
    singletonGroup: "zero",
  }),
  fixed: Object.freeze({
    fnorm: 1,
    failedEpisodes: "drop",
    minGroupSupport: 4,
    eta: 1,
    unfinishedTurn: "judge",
    divideBySumWeights: false,
    trajectoryDivisor: "reference-turns",
    dependenciesAtTurnLevel: true,
    dependencyTiming: "before-step",
    baselinePopulation: "reached",
    stepFnorm: "none",
    singletonGroup: "zero",
  }),
});

/** Added to the standard deviation when `fnorm` is `"std"` (as verl). */
export const STD_EPSILON = 1e-6;

/**
 * The reward options a run config asks for: its preset and level plus the overrides it sets (unset ones come
 * from the preset). The one place they are read from the config, for episodes and rewards alike.
 */
export function rewardOptionsOf(cm2: {
  readonly preset: RewardPreset;
  readonly advantageLevel: RewardLevel;
  readonly fnorm?: RewardOptions["fnorm"] | undefined;
  readonly failedEpisodes?: RewardOptions["failedEpisodes"] | undefined;
  readonly minGroupSupport?: number | undefined;
  readonly eta?: number | undefined;
}): RewardOptionsInput {
  return {
    preset: cm2.preset,
    level: cm2.advantageLevel,
    fnorm: cm2.fnorm,
    failedEpisodes: cm2.failedEpisodes,
    minGroupSupport: cm2.minGroupSupport,
    eta: cm2.eta,
  };
}

const WEIGHT_TOLERANCE = 1e-6;

const CHOICES: { readonly [K in keyof RewardOptions]?: readonly unknown[] } = {
  level: ["trajectory", "turn", "step"],
  preset: ["paper", "reference", "fixed"],
  fnorm: ["std", 1],
  failedEpisodes: ["keep-zero", "drop"],
  unfinishedTurn: ["no-credit", "judge"],
  divideBySumWeights: [true, false],
  trajectoryDivisor: ["reference-turns", "reached-turns"],
  dependenciesAtTurnLevel: [true, false],
  dependencyTiming: ["before-step", "item-order"],
  baselinePopulation: ["all", "reached"],
  stepFnorm: ["per-item", "none"],
  singletonGroup: ["verl", "zero"],
};

/**
 * Resolves options: the preset's switches (default preset `fixed`, default level `trajectory`), then the
 * given overrides. Throws on an unknown value.
 *
 * @example
 * ```ts
 * resolveRewardOptions({ preset: "reference", level: "turn", minGroupSupport: 1 });
 * ```
 */
export function resolveRewardOptions(input: RewardOptionsInput = {}): RewardOptions {
  const preset = input.preset ?? "fixed";
  const base = REWARD_PRESETS[preset];
  if (base === undefined) throw new Error(`Unknown reward preset ${JSON.stringify(preset)}`);
  const merged: Record<string, unknown> = { level: "trajectory", ...base, preset };
  for (const [key, value] of Object.entries(input)) {
    if (value !== undefined) merged[key] = value;
  }
  for (const [key, allowed] of Object.entries(CHOICES)) {
    if (!allowed.includes(merged[key])) {
      throw new Error(
        `Reward option ${key} is ${JSON.stringify(merged[key])}, expected one of ${JSON.stringify(allowed)}`,
      );
    }
  }
  const options = merged as unknown as RewardOptions;
  if (!Number.isInteger(options.minGroupSupport) || options.minGroupSupport < 0) {
    throw new Error(`Reward option minGroupSupport is ${options.minGroupSupport}, expected an integer >= 0`);
  }
  if (!(options.eta >= 0 && options.eta <= 1)) {
    throw new Error(`Reward option eta is ${options.eta}, expected a number in [0, 1]`);
  }
  return options;
}

/**
 * Strictness gate (§2.2 point 2): the turn passes iff every `required_for_next_turn` item was judged true
 * at at least one step. Dependencies are not checked (as in the reference). A turn without required items
 * passes, even with no steps.
 *
 * @example
 * ```ts
 * // items 0 and 1 required: each is true at some step, so the turn passes
 * turnPassed(items, [{ sat: [true, false] }, { sat: [false, true] }]); // true
 * ```
 */
export function turnPassed(
  items: TurnItems,
  steps: readonly { readonly sat: readonly boolean[] }[],
): boolean {
  steps.forEach((step, s) => checkRow(step.sat, items.length, `Step ${s}`));
  return items.every((item, c) => !item.required_for_next_turn || steps.some((step) => step.sat[c] === true));
}

/** Pass statistics of one checklist item over a group; see {@link itemPassRate}. */
export interface ItemPassRate {
  /** Item id. */
  readonly id: string;
  /** Ok episodes that reached the item's turn. */
  readonly reached: number;
  /** Of those, the episodes in which the item was credited. */
  readonly passed: number;
  /** `passed / reached`, or null when no ok episode reached the turn. */
  readonly rate: number | null;
}

/**
 * Per-item pass rates for metrics and the checklist drill-down: over the ok episodes that reached each
 * turn, how often each item was credited. By default an item passes when it was judged true at any step
 * (the reference OR); with `dependencies` set, it must be completed under that dependency timing.
 * Verdicts of an unfinished turn are used as judged.
 *
 * @returns one array per reference turn, one entry per item.
 */
export function itemPassRate(
  checklist: RewardChecklist,
  episodes: readonly EpisodeVerdicts[],
  options: { readonly dependencies?: "ignore" | RewardSwitches["dependencyTiming"] } = {},
): ItemPassRate[][] {
  const turns = prepareChecklist(checklist);
  const dependencies = options.dependencies ?? "ignore";
  const traceOptions = {
    unfinishedTurn: "judge",
    dependenciesAtTurnLevel: dependencies !== "ignore",
    dependencyTiming: dependencies === "ignore" ? "before-step" : dependencies,
  } as const;
  const traces = episodes.flatMap((episode, e) =>
    episode.ok ? [traceEpisode(turns, episode, e, traceOptions)] : []
  );
  return turns.map((turn, t) =>
    turn.items.map((item, c) => {
      const holders = traces.flatMap((trace) => trace[t] === undefined ? [] : [trace[t]]);
      const passed = holders.filter((tt) => tt.credited[c] === true).length;
      return {
        id: item.id,
        reached: holders.length,
        passed,
        rate: holders.length > 0 ? passed / holders.length : null,
      };
    })
  );
}

/** The advantage of one assistant message. */
export interface StepAdvantage {
  /** Index of the assistant message in the episode transcript (from {@link StepVerdicts.messageIndex}). */
  readonly messageIndex: number;
  /** Advantage for every loss token of that message. */
  readonly advantage: number;
}

/** Result for one episode, in the order of {@link RewardGroup.episodes}. */
export interface EpisodeAdvantages {
  /**
   * Trajectory-level reward R in [0, 1] (eq. 4 / §5.4, divisor per `trajectoryDivisor`), reported at
   * every level. 0 for a failed episode.
   */
  readonly reward: number;
  /** `S_t` per reference turn (length `T_ref`): summed weights of the credited items; 0 when unreached. */
  readonly turnScores: readonly number[];
  /**
   * One entry per assistant step, in order. Trajectory level: the same A on every step. Turn level:
   * `A_{i,k}` on every step of turn k. Step level: `A_{i,s}`. 0 everywhere for an excluded episode.
   */
  readonly advantages: readonly StepAdvantage[];
  /** True when the failed-episode policy drops this episode from the loss (`ok=false` and `drop`). */
  readonly excluded: boolean;
}

/** Mean, standard deviation and size of one baseline population. */
export interface Moments {
  /** Mean of the population (0 when empty). */
  readonly mean: number;
  /** Unbiased standard deviation, without the 1e-6 (0 for fewer than 2 values). */
  readonly std: number;
  /** Number of episodes in the population. */
  readonly support: number;
}

/** Group statistics of every level, each computed with its own population rules. */
export interface GroupStats {
  /** Trajectory rewards over the trajectory population (ok episodes, plus failed ones under keep-zero). */
  readonly trajectory: Moments;
  /** Turn scores per reference turn, over the turn-level population (`baselinePopulation`). */
  readonly turns: readonly Moments[];
  /** Item completion per reference turn and item (the step-level baseline `b_{t,c}` and its support). */
  readonly items: readonly (readonly (Moments & { readonly id: string })[])[];
  /** Episodes with `ok=false`. */
  readonly failed: number;
  /** Episodes flagged `excluded`. */
  readonly excluded: number;
}

/** Output of {@link computeAdvantages}. */
export interface GroupAdvantages {
  /** One result per episode, in input order. */
  readonly episodes: readonly EpisodeAdvantages[];
  /** Baseline statistics. */
  readonly stats: GroupStats;
  /** The resolved options that produced this result. */
  readonly options: RewardOptions;
}

/**
 * Computes rewards and advantages for one group (the G rollouts of one task).
 *
 * - Trajectory level (§5.4, eq. 4–5): `R_i = Σ_t S_t / divisor`, `A_i = (R_i − mean) / Fnorm` over the
 *   trajectory population, put on every step.
 * - Turn level (§5.5, eq. 6–7): `A_{i,k} = (S_k − mean_k) / Fnorm_k` over the turn's population, 0 when
 *   its support is `<= minGroupSupport`, put on every step of turn k.
 * - Step level (§5.7, eq. 3, 8–10): for each eligible item c of step s, `w_c (r̃_c − b_c) / F_c` with
 *   `r̃_c = eta^(completion step − s)` if c is completed later in the turn (backfill) and 0 otherwise,
 *   summed over the step's eligible items and optionally divided by their summed weight. An item whose
 *   support is `<= minGroupSupport` adds 0 but its weight still counts in the division.
 *
 * Throws on malformed input (weights not summing to 1, unknown dependency ids, verdict rows of the wrong
 * length, more turns than the checklist, an unfinished or stepless turn that is not the last).
 *
 * @example
 * ```ts
 * const { episodes } = computeAdvantages({ checklist, episodes: rollouts }, { preset: "reference" });
 * episodes[0]?.advantages; // [{ messageIndex: 2, advantage: -0.25 }, …]
 * ```
 */
export function computeAdvantages(group: RewardGroup, input: RewardOptionsInput = {}): GroupAdvantages {
  const options = resolveRewardOptions(input);
  const turns = prepareChecklist(group.checklist);
  const tRef = turns.length;
  const traces = group.episodes.map((episode, e) =>
    episode.ok ? traceEpisode(turns, episode, e, options) : null
  );
  const rewards = traces.map((trace) => trace === null ? 0 : trajectoryReward(trace, tRef, options));
  const members = traces.flatMap((trace) => trace === null ? [] : [trace]);
  const excluded = group.episodes.map((episode) => !episode.ok && options.failedEpisodes === "drop");

  // Trajectory level: failed episodes enter with reward 0 under keep-zero.
  const trajectory = moments(rewards.filter((_, e) => traces[e] !== null || !excluded[e]));
  const lone = trajectory.support === 1 && options.singletonGroup === "verl";
  const trajectoryMean = lone ? 0 : trajectory.mean;
  const trajectoryScale = lone ? 1 : scale(trajectory.std, options.fnorm);

  // Turn level: one population per reference turn.
  const turnStats = turns.map((_, t) => {
    const values = options.baselinePopulation === "all"
      ? members.map((trace) => trace[t]?.score ?? 0)
      : members.flatMap((trace) => trace[t] === undefined ? [] : [trace[t].score]);
    return moments(values);
  });

  // Step level: one baseline per (turn, item).
  const itemStats = turns.map((turn, t) =>
    turn.items.map((item, c) => {
      const values = members.flatMap((trace) => {
        const tt = trace[t];
        if (options.baselinePopulation === "all") return [tt !== undefined && tt.done[c]! >= 0 ? 1 : 0];
        if (tt === undefined) return [];
        if (tt.done[c]! >= 0) return [1];
        return tt.eligible[c] === true ? [0] : [];
      });
      return { id: item.id, ...moments(values) };
    })
  );

  const episodes = group.episodes.map((episode, e): EpisodeAdvantages => {
    const trace = traces[e] ?? null;
    const turnScores = turns.map((_, t) => trace?.[t]?.score ?? 0);
    const base = { reward: rewards[e]!, turnScores, excluded: excluded[e]! };
    if (trace === null) {
      const keep = options.level === "trajectory" && !excluded[e];
      const advantage = keep ? (0 - trajectoryMean) / trajectoryScale : 0;
      const advantages = episode.turns.flatMap((turn) =>
        turn.steps.map((step) => ({ messageIndex: step.messageIndex, advantage }))
      );
      return { ...base, advantages };
    }
    if (options.level === "trajectory") {
      const advantage = (rewards[e]! - trajectoryMean) / trajectoryScale;
      return { ...base, advantages: trace.flatMap((tt) => tt.steps.map((step) => at(step, advantage))) };
    }
    if (options.level === "turn") {
      const advantages = trace.flatMap((tt, t) => {
        const stats = turnStats[t]!;
        const advantage = stats.support > options.minGroupSupport
          ? (tt.score - stats.mean) / scale(stats.std, options.fnorm)
          : 0;
        return tt.steps.map((step) => at(step, advantage));
      });
      return { ...base, advantages };
    }
    const advantages = trace.flatMap((tt, t) => {
      const { items, deps } = turns[t]!;
      return tt.steps.map((step, s) => {
        let sum = 0;
        let weights = 0;
        items.forEach((item, c) => {
          if (!eligibleAt(deps, tt.done, c, s)) return;
          weights += item.weight;
          const stats = itemStats[t]![c]!;
          if (stats.support <= options.minGroupSupport) return;
          const doneAt = tt.done[c]!;
          const backfilled = doneAt >= 0 ? options.eta ** (doneAt - s) : 0;
          const itemScale = options.stepFnorm === "per-item" ? scale(stats.std, options.fnorm) : 1;
          sum += item.weight * (backfilled - stats.mean) / itemScale;
        });
        const advantage = options.divideBySumWeights ? (weights > 0 ? sum / weights : 0) : sum;
        return at(step, advantage);
      });
    });
    return { ...base, advantages };
  });

  return {
    episodes,
    stats: {
      trajectory,
      turns: turnStats,
      items: itemStats,
      failed: group.episodes.filter((episode) => !episode.ok).length,
      excluded: excluded.filter(Boolean).length,
    },
    options,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Internals

interface PreparedTurn {
  readonly items: TurnItems;
  /** `deps[c]`: indices of the items that item c depends on. */
  readonly deps: readonly (readonly number[])[];
}

/** What one reached turn of an ok episode contributes. */
interface TurnTrace {
  readonly steps: readonly StepVerdicts[];
  /** Completion step per item under the dependency timing, -1 when never completed. */
  readonly done: readonly number[];
  /** Whether the item was eligible at some point of the completion walk. */
  readonly eligible: readonly boolean[];
  /** Whether the item is credited in the turn score. */
  readonly credited: readonly boolean[];
  /** `S_t`. */
  readonly score: number;
}

type TraceOptions = Pick<RewardSwitches, "unfinishedTurn" | "dependenciesAtTurnLevel" | "dependencyTiming">;

function prepareChecklist(checklist: RewardChecklist): PreparedTurn[] {
  if (checklist.length === 0) throw new Error("Checklist has 0 turns, expected at least 1");
  return checklist.map((items, t) => {
    const index = new Map<string, number>();
    items.forEach((item, c) => {
      if (index.has(item.id)) throw new Error(`Checklist turn ${t} repeats item id ${item.id}`);
      if (!Number.isFinite(item.weight) || item.weight < 0) {
        throw new Error(
          `Checklist item ${item.id} of turn ${t} has weight ${item.weight}, expected a number >= 0`,
        );
      }
      index.set(item.id, c);
    });
    const sum = items.reduce((acc, item) => acc + item.weight, 0);
    if (Math.abs(sum - 1) > WEIGHT_TOLERANCE) {
      throw new Error(`Checklist weights of turn ${t} sum to ${sum}, expected 1`);
    }
    const deps = items.map((item) =>
      item.dependence.map((id) => {
        const d = index.get(id);
        if (d === undefined) {
          throw new Error(`Checklist item ${item.id} of turn ${t} depends on unknown item ${id}`);
        }
        return d;
      })
    );
    return { items, deps };
  });
}

function checkRow(sat: readonly boolean[], expected: number, where: string): void {
  if (sat.length !== expected) throw new Error(`${where} has ${sat.length} verdicts, expected ${expected}`);
}

function traceEpisode(
  turns: readonly PreparedTurn[],
  episode: EpisodeVerdicts,
  e: number,
  options: TraceOptions,
): TurnTrace[] {
  if (episode.turns.length > turns.length) {
    throw new Error(`Episode ${e} has ${episode.turns.length} turns, expected at most ${turns.length}`);
  }
  const last = episode.turns.length - 1;
  const traces: TurnTrace[] = [];
  episode.turns.forEach((turn, t) => {
    if (t < last && (turn.steps.length === 0 || !turn.complete)) {
      throw new Error(`Turn ${t} of episode ${e} is unfinished but not the last turn`);
    }
    if (turn.steps.length === 0) return;
    const { items, deps } = turns[t]!;
    const usable = turn.complete || options.unfinishedTurn === "judge";
    const sat = turn.steps.map((step, s) => {
      checkRow(step.sat, items.length, `Step ${s} of turn ${t} in episode ${e}`);
      return usable ? step.sat : items.map(() => false);
    });
    const { done, eligible } = walkTurn(deps, sat, options.dependencyTiming);
    const credited = options.dependenciesAtTurnLevel
      ? done.map((at) => at >= 0)
      : items.map((_, c) => sat.some((row) => row[c] === true));
    const score = items.reduce((acc, item, c) => credited[c] ? acc + item.weight : acc, 0);
    traces.push({ steps: turn.steps, done, eligible, credited, score });
  });
  return traces;
}

/**
 * The completion walk: steps in order, items in index order within a step. An item completes at the first
 * step where it is judged true while its dependencies hold; it is eligible while they hold and it is not
 * completed yet.
 */
function walkTurn(
  deps: readonly (readonly number[])[],
  sat: readonly (readonly boolean[])[],
  timing: RewardSwitches["dependencyTiming"],
): { done: number[]; eligible: boolean[] } {
  const done = deps.map(() => -1);
  const eligible = deps.map(() => false);
  sat.forEach((row, s) => {
    deps.forEach((ds, c) => {
      if (done[c]! >= 0) return;
      // Under item-order, done[d] === s can only hold for d < c: later items of this step are not walked yet.
      const ready = ds.every((d) => done[d]! >= 0 && (done[d]! < s || timing === "item-order"));
      if (!ready) return;
      eligible[c] = true;
      if (row[c] === true) done[c] = s;
    });
  });
  return { done, eligible };
}

/** `c ∈ E_s`: dependencies completed at earlier steps, and c itself not completed at an earlier step. */
function eligibleAt(
  deps: readonly (readonly number[])[],
  done: readonly number[],
  c: number,
  s: number,
): boolean {
  const own = done[c]!;
  if (own >= 0 && own < s) return false;
  return deps[c]!.every((d) => done[d]! >= 0 && done[d]! < s);
}

function trajectoryReward(trace: readonly TurnTrace[], tRef: number, options: RewardSwitches): number {
  const total = trace.reduce((acc, tt) => acc + tt.score, 0);
  const divisor = options.trajectoryDivisor === "reference-turns" ? tRef : trace.length;
  return divisor > 0 ? total / divisor : 0;
}

function moments(values: readonly number[]): Moments {
  const support = values.length;
  if (support === 0) return { mean: 0, std: 0, support };
  const mean = values.reduce((acc, v) => acc + v, 0) / support;
  if (support < 2) return { mean, std: 0, support };
  const squares = values.reduce((acc, v) => acc + (v - mean) ** 2, 0);
  return { mean, std: Math.sqrt(squares / (support - 1)), support };
}

function scale(std: number, fnorm: RewardSwitches["fnorm"]): number {
  return fnorm === "std" ? std + STD_EPSILON : 1;
}

function at(step: StepVerdicts, advantage: number): StepAdvantage {
  return { messageIndex: step.messageIndex, advantage };
}
