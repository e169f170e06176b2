/**
 * The reward presets and options (CM2, `docs/cm2-reference.md` §5.10): the levels, the named switch sets
 * (`paper`, `reference`, `fixed`) with the table of how they differ, the per-switch overrides, and the one
 * reading of them from a run config (`rewardOptionsOf`). The math that uses them is `rewards.ts`, which
 * re-exports everything here.
 *
 * @module
 */

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
   * When an item can pay, that is, when its dependencies hold (each item pays at most once, at its first
   * paying step). `"pre-step-verdicts"` (eq. 2 as written, §5.10): item c pays at step s iff every dependency
   * was judged true and c itself judged false in the pre-step state (the verdicts of step s − 1; before step 0
   * nothing holds), and c is judged true at s. Dependencies are read from the verdicts, not from whether they
   * paid. `"before-step"`: c is judged true at s and every dependency completed (paid) at an earlier step.
   * `"item-order"`: also when a dependency completed at the same step earlier in item order (the reference's
   * walk; an item completed this way counts in the step-level baseline but never receives a step advantage,
   * §5.7). Eligibility (`E_s`) and backfill use the same rule, with `item-order` read as `before-step`.
   */
  readonly dependencyTiming: "pre-step-verdicts" | "before-step" | "item-order";
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
 * | `dependencyTiming`        | `item-order`      | `pre-step-verdicts` | `pre-step-verdicts` |
 * | `baselinePopulation`      | `reached`         | `all`          | `reached`         |
 * | `stepFnorm`               | `none`            | `per-item`     | `none`            |
 * | `singletonGroup`          | `verl`            | `zero`         | `zero`            |
 *
 * - `reference`: what the released code does (§5): OR over steps, `T_ref` divisor, failed episodes kept
 *   with reward 0 in the GRPO mean, `> 4` holders or eligible episodes, eligibility-conditioned step
 *   baseline without Fnorm or Σw division, unfinished last turn without credit.
 * - `paper`: eq. 2–10 as written: an item pays when it flips from false to true while its dependencies
 *   were judged true in the pre-step state (raw verdicts, at most once per item), backfill, means and
 *   Fnorm over the whole group, division by the reached turns `L` and by Σw. The paper does not say how
 *   failed episodes are treated; they are dropped.
 * - `fixed`: `reference` with its bugs fixed: unfinished turns judged, failed episodes dropped from the
 *   baseline and the loss, dependencies respected everywhere with the paper's rule on raw verdicts (so that
 *   an out-of-order guess never pays, and every paying item also gets its step advantage), and no verl
 *   singleton special case.
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
    dependencyTiming: "pre-step-verdicts",
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
    dependencyTiming: "pre-step-verdicts",
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

const CHOICES: { readonly [K in keyof RewardOptions]?: readonly unknown[] } = {
  level: ["trajectory", "turn", "step"],
  preset: ["paper", "reference", "fixed"],
  fnorm: ["std", 1],
  failedEpisodes: ["keep-zero", "drop"],
  unfinishedTurn: ["no-credit", "judge"],
  divideBySumWeights: [true, false],
  trajectoryDivisor: ["reference-turns", "reached-turns"],
  dependenciesAtTurnLevel: [true, false],
  dependencyTiming: ["pre-step-verdicts", "before-step", "item-order"],
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
