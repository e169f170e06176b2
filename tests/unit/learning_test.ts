import assert from "node:assert/strict";
import { bootstrapDelta, learningReport, rewardHistogram, type ValidationPass } from "../../core/learning.ts";
import { prng } from "../../core/sampling.ts";

function pass(
  iteration: number,
  rewardOf: (task: number, sample: number) => number,
  tasks = 30,
  samples = 4,
) {
  const out: ValidationPass = { iteration, tasks: {} };
  for (let t = 0; t < tasks; t++) {
    out.tasks[`t${t}`] = Array.from({ length: samples }, (_, s) => rewardOf(t, s));
  }
  return out;
}

Deno.test("bootstrapDelta: no change gives an interval around 0; a real gain an interval above 0", () => {
  const rand = prng(3);
  const noise = Array.from({ length: 120 }, () => rand());
  const before = pass(0, (t, s) => noise[t * 4 + s]!);
  const same = bootstrapDelta(before, pass(10, (t, s) => noise[t * 4 + s]!));
  assert.equal(same.delta, 0);
  assert.ok(same.low < 0 && same.high > 0, JSON.stringify(same));
  const better = bootstrapDelta(before, pass(10, (t, s) => Math.min(1, noise[t * 4 + s]! + 0.3)));
  assert.ok(better.delta > 0.2 && better.low > 0.1, JSON.stringify(better));
  assert.deepEqual(
    bootstrapDelta(before, pass(10, (t, s) => noise[(t * 4 + s + 7) % 120]!), { seed: 5 }),
    bootstrapDelta(before, pass(10, (t, s) => noise[(t * 4 + s + 7) % 120]!), { seed: 5 }),
    "seeded",
  );
  // Only shared tasks count.
  const half = pass(10, () => 1, 15);
  assert.equal(bootstrapDelta(before, half).tasks, 15);
  assert.throws(
    () => bootstrapDelta(before, { iteration: 1, tasks: { other: [1] } }),
    /share no held-out task/,
  );
});

Deno.test("bootstrapDelta: task-level variance widens the interval (tasks are resampled, not only samples)", () => {
  // Half the tasks always 1, half always 0, before and after: the per-task spread is in the interval.
  const mixed = (t: number) => (t % 2 ? 1 : 0);
  const shift = bootstrapDelta(pass(0, (t) => mixed(t)), pass(1, (t) => mixed(t) * 0.9 + 0.05));
  assert.ok(shift.high - shift.low > 0.001, JSON.stringify(shift));
});

Deno.test("learningReport: the JSON line, the curve, the diagnostics and the base-model comparison", () => {
  const report = learningReport({
    validation: [pass(20, () => 0.8), pass(0, () => 0.5), pass(10, () => 0.6)],
    train: [
      { iteration: 0, meanReward: 0.5, groups: 4, zeroVarianceGroups: 1, rewards: [0, 1, 0.5], update: null },
      {
        iteration: 1,
        meanReward: 0.6,
        groups: 4,
        zeroVarianceGroups: 3,
        rewards: [1, 1],
        update: { kl: 0.01, entropy: 1.5, gradNorm: 0.2, clipFrac: 0.1, loss: 0 },
      },
    ],
    base: pass(0, () => 0.1),
    seconds: 12.4,
  });
  assert.deepEqual(report.line, {
    iterations: 20,
    val_reward_before: 0.5,
    val_reward_after: 0.8,
    delta: 0.3,
    ci95_low: 0.3,
    ci95_high: 0.3,
    zero_variance_groups: 0.5,
    seconds: 12,
  });
  assert.deepEqual(report.curve.map((c) => [c.iteration, c.reward, c.episodes]), [[0, 0.5, 120], [
    10,
    0.6,
    120,
  ], [
    20,
    0.8,
    120,
  ]]);
  assert.deepEqual(report.base, { val_reward: 0.1, delta: 0.7, ci95_low: 0.7, ci95_high: 0.7 });
  assert.equal(report.train[1]!.entropy, 1.5);
  assert.deepEqual(report.rewardHistogram.train, [0.2, 0, 0.2, 0, 0.6]);
  assert.throws(
    () => learningReport({ validation: [pass(0, () => 1)], train: [], seconds: 0 }),
    /two validation/,
  );
});

Deno.test("rewardHistogram bins [0, 1] into equal shares, 1 in the last bin", () => {
  assert.deepEqual(rewardHistogram([0, 0.1, 0.5, 0.99, 1], 5), [0.4, 0, 0.2, 0, 0.4]);
  assert.deepEqual(rewardHistogram([], 2), [0, 0]);
});
