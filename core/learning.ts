/**
 * The learning report of a run (`deno task bench:learning`): validation rewards before and after RL, their
 * difference with a bootstrap confidence interval, the validation curve, and the diagnostics that explain a
 * result (zero-variance groups, reward distribution, KL, entropy, gradient norm, clip fraction). Pure.
 *
 * The interval is a paired bootstrap over held-out tasks × samples: each resample draws the held-out tasks with
 * replacement, and within each drawn task its samples with replacement, before and after independently; the
 * statistic is the difference of the two means. A seeded generator makes the interval reproducible.
 *
 * @module
 */
import { prng } from "./sampling.ts";

/** One validation pass: the reward of every episode, by held-out task. */
export interface ValidationPass {
  iteration: number;
  /** Rewards per task (task key → the rewards of its samples). */
  tasks: Record<string, number[]>;
}

/** One training iteration's numbers, for the diagnostics. */
export interface TrainIteration {
  iteration: number;
  meanReward: number;
  /** Groups (tasks) of the iteration, and those whose G rewards were all equal (no GRPO signal). */
  groups: number;
  zeroVarianceGroups: number;
  /** The rewards of every episode of the iteration. */
  rewards: number[];
  update: {
    kl: number;
    entropy?: number | null;
    gradNorm: number;
    clipFrac: number;
    loss: number;
  } | null;
}

/** Mean of a non-empty list (0 for an empty one). */
function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

/** The mean over every sample of every task. */
export function passMean(pass: ValidationPass): number {
  return mean(Object.values(pass.tasks).flat());
}

/**
 * The paired bootstrap interval of mean(after) − mean(before) over the tasks both passes share (see the module
 * doc): `[low, high]` at the given level (default 95 %).
 */
export function bootstrapDelta(
  before: ValidationPass,
  after: ValidationPass,
  opts: { resamples?: number; seed?: number; level?: number } = {},
): { delta: number; low: number; high: number; tasks: number } {
  const keys = Object.keys(before.tasks).filter((k) => after.tasks[k]?.length && before.tasks[k]!.length)
    .sort();
  if (keys.length === 0) throw new Error("The two validation passes share no held-out task");
  const b = keys.map((k) => before.tasks[k]!);
  const a = keys.map((k) => after.tasks[k]!);
  const delta = mean(a.flat()) - mean(b.flat());
  const rand = prng(opts.seed ?? 0);
  const pick = (n: number) => Math.floor(rand() * n);
  const resample = (rows: number[][], chosen: number[]) => {
    let sum = 0;
    let n = 0;
    for (const t of chosen) {
      const row = rows[t]!;
      for (let i = 0; i < row.length; i++) {
        sum += row[pick(row.length)]!;
        n++;
      }
    }
    return sum / n;
  };
  const stats: number[] = [];
  for (let r = 0; r < (opts.resamples ?? 2000); r++) {
    const chosen = keys.map(() => pick(keys.length));
    stats.push(resample(a, chosen) - resample(b, chosen));
  }
  stats.sort((x, y) => x - y);
  const tail = (1 - (opts.level ?? 0.95)) / 2;
  const at = (q: number) => stats[Math.min(stats.length - 1, Math.max(0, Math.floor(q * stats.length)))]!;
  return { delta, low: at(tail), high: at(1 - tail), tasks: keys.length };
}

/**
 * The bootstrap interval of the mean over tasks × samples (the same two-level resampling as
 * {@linkcode bootstrapDelta}, one pass): `[low, high]` at the given level (default 95 %).
 */
export function bootstrapMean(
  tasks: Record<string, number[]>,
  opts: { resamples?: number; seed?: number; level?: number } = {},
): { mean: number; low: number; high: number; tasks: number } {
  const empty = { iteration: 0, tasks: {} };
  const keys = Object.keys(tasks).filter((k) => tasks[k]!.length > 0);
  if (keys.length === 0) return { mean: 0, low: 0, high: 0, tasks: 0 };
  // Against a pass of zeros on the same tasks, the paired difference is the mean itself, resampled the same way.
  const zeros = { ...empty, tasks: Object.fromEntries(keys.map((k) => [k, tasks[k]!.map(() => 0)])) };
  const r = bootstrapDelta(zeros, { ...empty, tasks }, opts);
  return { mean: r.delta, low: r.low, high: r.high, tasks: r.tasks };
}

/** Share of rewards in each of `bins` equal bins of [0, 1] (the last bin includes 1). */
export function rewardHistogram(rewards: readonly number[], bins = 5): number[] {
  const counts = new Array<number>(bins).fill(0);
  for (const r of rewards) counts[Math.min(bins - 1, Math.max(0, Math.floor(r * bins)))]!++;
  return counts.map((c) => rewards.length ? Math.round((c / rewards.length) * 1000) / 1000 : 0);
}

/** The report: the one JSON line of the benchmark, and the curve and diagnostics behind it. */
export interface LearningReport {
  line: {
    iterations: number;
    val_reward_before: number;
    val_reward_after: number;
    delta: number;
    ci95_low: number;
    ci95_high: number;
    zero_variance_groups: number;
    seconds: number;
  };
  /** Over the raw base model (no SFT), where a base validation pass exists. */
  base?: { val_reward: number; delta: number; ci95_low: number; ci95_high: number };
  curve: { iteration: number; reward: number; episodes: number }[];
  train: {
    iteration: number;
    reward: number;
    zeroVarianceShare: number;
    kl: number | null;
    entropy: number | null;
    gradNorm: number | null;
    clipFrac: number | null;
  }[];
  rewardHistogram: { before: number[]; after: number[]; train: number[] };
}

const round = (x: number, d = 4) => Math.round(x * 10 ** d) / 10 ** d;

/**
 * The report of a run from its validation passes (sorted by iteration; the first is before RL, the last after
 * it), its training iterations, and optionally the base model's validation pass.
 */
export function learningReport(input: {
  validation: readonly ValidationPass[];
  train: readonly TrainIteration[];
  base?: ValidationPass;
  seconds: number;
  seed?: number;
}): LearningReport {
  const passes = [...input.validation].sort((x, y) => x.iteration - y.iteration);
  if (passes.length < 2) {
    throw new Error(`A learning report needs two validation passes, found ${passes.length}`);
  }
  const before = passes[0]!;
  const after = passes.at(-1)!;
  const d = bootstrapDelta(before, after, { seed: input.seed ?? 0 });
  const groups = input.train.reduce((n, t) => n + t.groups, 0);
  const zero = input.train.reduce((n, t) => n + t.zeroVarianceGroups, 0);
  const report: LearningReport = {
    line: {
      // the updates between the two passes (a pass at iteration n validates the policy after n updates)
      iterations: after.iteration - before.iteration,
      val_reward_before: round(passMean(before)),
      val_reward_after: round(passMean(after)),
      delta: round(d.delta),
      ci95_low: round(d.low),
      ci95_high: round(d.high),
      zero_variance_groups: groups ? round(zero / groups, 3) : 0,
      seconds: Math.round(input.seconds),
    },
    curve: passes.map((p) => ({
      iteration: p.iteration,
      reward: round(passMean(p)),
      episodes: Object.values(p.tasks).flat().length,
    })),
    train: input.train.map((t) => ({
      iteration: t.iteration,
      reward: round(t.meanReward),
      zeroVarianceShare: t.groups ? round(t.zeroVarianceGroups / t.groups, 3) : 0,
      kl: t.update ? t.update.kl : null,
      entropy: t.update?.entropy ?? null,
      gradNorm: t.update ? t.update.gradNorm : null,
      clipFrac: t.update ? t.update.clipFrac : null,
    })),
    rewardHistogram: {
      before: rewardHistogram(Object.values(before.tasks).flat()),
      after: rewardHistogram(Object.values(after.tasks).flat()),
      train: rewardHistogram(input.train.flatMap((t) => t.rewards)),
    },
  };
  if (input.base) {
    const b = bootstrapDelta(input.base, after, { seed: (input.seed ?? 0) + 1 });
    report.base = {
      val_reward: round(passMean(input.base)),
      delta: round(b.delta),
      ci95_low: round(b.low),
      ci95_high: round(b.high),
    };
  }
  return report;
}
