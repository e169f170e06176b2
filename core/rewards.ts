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

import {
  resolveRewardOptions,
  type RewardOptions,
  type RewardOptionsInput,
  type RewardSwitches,
  STD_EPSILON,
} from "./reward_options.ts";

export * from "./reward_options.ts";

const WEIGHT_TOLERANCE = 1e-6;

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
   * What each checklist item paid (length `T_ref`; an unreached turn, or every turn of a failed episode, is
   * `[]`): per item of the turn, its share of `R` (`weight / divisor`; 0 when not credited) and the step of the
   * turn at which it completed in the walk (-1: never; an item credited at turn level without its dependencies
   * pays with step -1). The shares of an episode sum to `reward`.
   */
  readonly items: readonly (readonly ItemPaid[])[];
  /**
   * One entry per assistant step, in order. Trajectory level: the same A on every step. Turn level:
   * `A_{i,k}` on every step of turn k. Step level: `A_{i,s}`. 0 everywhere for an excluded episode.
   */
  readonly advantages: readonly StepAdvantage[];
  /** True when the failed-episode policy drops this episode from the loss (`ok=false` and `drop`). */
  readonly excluded: boolean;
}

/** What one checklist item paid in one turn of an episode (see {@link EpisodeAdvantages.items}). */
export interface ItemPaid {
  readonly step: number;
  readonly reward: number;
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
    const items = turns.map((turn, t) => trace ? itemsPaid(turn, trace[t], trace.length, tRef, options) : []);
    const base = { reward: rewards[e]!, turnScores, items, excluded: excluded[e]! };
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
          const timing = options.dependencyTiming === "item-order" ? "before-step" : options.dependencyTiming;
          if (!eligibleAt(deps, tt.done, tt.sat, c, s, timing)) return;
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
  /** The verdict rows the walk read (all false for an unfinished turn under `no-credit`). */
  readonly sat: readonly (readonly boolean[])[];
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
    traces.push({ steps: turn.steps, sat, done, eligible, credited, score });
  });
  return traces;
}

/**
 * The completion walk: steps in order, items in index order within a step. An item completes (pays) at the
 * first step where it is judged true while it is eligible; see {@link eligibleAt} for when that is under
 * each dependency timing.
 */
function walkTurn(
  deps: readonly (readonly number[])[],
  sat: readonly (readonly boolean[])[],
  timing: RewardSwitches["dependencyTiming"],
): { done: number[]; eligible: boolean[] } {
  const done = deps.map(() => -1);
  const eligible = deps.map(() => false);
  sat.forEach((row, s) => {
    deps.forEach((_, c) => {
      if (done[c]! >= 0) return;
      // Under item-order, done[d] === s can only hold for d < c: later items of this step are not walked yet.
      if (!eligibleAt(deps, done, sat, c, s, timing)) return;
      eligible[c] = true;
      if (row[c] === true) done[c] = s;
    });
  });
  return { done, eligible };
}

/**
 * `c ∈ E_s`: item c can pay at step s. Never after it has paid (each item pays at most once, at its first
 * paying flip). Then, by timing:
 * - `pre-step-verdicts` (eq. 2 as written): every dependency was judged true and c itself judged false in
 *   the pre-step state (the verdicts of step s − 1; before step 0 nothing holds).
 * - `before-step`: every dependency completed at an earlier step.
 * - `item-order` (the reference's walk): also a dependency completed at this step, earlier in item order.
 *   Step advantages read it with the `before-step` rule (the reference's eligibility, §5.7), which is what
 *   the walk sees for the dependencies not yet walked at this step.
 */
function eligibleAt(
  deps: readonly (readonly number[])[],
  done: readonly number[],
  sat: readonly (readonly boolean[])[],
  c: number,
  s: number,
  timing: RewardSwitches["dependencyTiming"],
): boolean {
  const own = done[c]!;
  if (own >= 0 && own < s) return false;
  if (timing === "pre-step-verdicts") {
    const pre = s > 0 ? sat[s - 1]! : undefined;
    return pre?.[c] !== true && deps[c]!.every((d) => pre?.[d] === true);
  }
  return deps[c]!.every((d) => done[d]! >= 0 && (done[d]! < s || (timing === "item-order" && done[d] === s)));
}

function trajectoryDivisor(reached: number, tRef: number, options: RewardSwitches): number {
  return options.trajectoryDivisor === "reference-turns" ? tRef : reached;
}

function trajectoryReward(trace: readonly TurnTrace[], tRef: number, options: RewardSwitches): number {
  const total = trace.reduce((acc, tt) => acc + tt.score, 0);
  const divisor = trajectoryDivisor(trace.length, tRef, options);
  return divisor > 0 ? total / divisor : 0;
}

/** Per item of a reached turn: the step it paid at and its share of the trajectory reward (`[]`: unreached). */
function itemsPaid(
  turn: PreparedTurn,
  tt: TurnTrace | undefined,
  reached: number,
  tRef: number,
  options: RewardSwitches,
): ItemPaid[] {
  if (!tt) return [];
  const divisor = trajectoryDivisor(reached, tRef, options);
  return turn.items.map((item, c) => {
    if (!tt.credited[c]) return { step: -1, reward: 0 };
    return { step: tt.done[c]!, reward: divisor > 0 ? item.weight / divisor : 0 };
  });
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
