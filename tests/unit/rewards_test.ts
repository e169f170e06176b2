import assert from "node:assert/strict";
import {
  computeAdvantages,
  type EpisodeVerdicts,
  itemPassRate,
  resolveRewardOptions,
  REWARD_PRESETS,
  type RewardChecklist,
  type RewardItem,
  turnPassed,
  type TurnVerdicts,
} from "../../core/rewards.ts";
import { prng } from "../../core/sampling.ts";

// ---------------------------------------------------------------------------------------------------------
// Helpers

function item(id: string, weight: number, dependence: string[] = [], required = false): RewardItem {
  return { id, weight, dependence, required_for_next_turn: required };
}

/** Builds an episode from bit strings ("101" = items 0 and 2 true); message indices run 1 (user), 2, 4, … */
function episode(ok: boolean, turns: string[][], lastComplete = true): EpisodeVerdicts {
  let index = 0;
  const built: TurnVerdicts[] = turns.map((steps, t) => {
    index += 1; // the user message
    return {
      complete: t < turns.length - 1 || lastComplete,
      steps: steps.map((bits) => {
        index += 1;
        const step = { messageIndex: index, sat: [...bits].map((b) => b === "1") };
        index += 1; // its tool result (or nothing after a reply; indices need only be distinct)
        return step;
      }),
    };
  });
  return { ok, turns: built };
}

function close(actual: number | undefined, expected: number, message = ""): void {
  assert.ok(actual !== undefined, `missing value ${message}`);
  assert.ok(Math.abs(actual - expected) < 1e-9, `${message}: expected ${expected}, got ${actual}`);
}

function closeAll(actual: readonly number[], expected: readonly number[], message = ""): void {
  assert.equal(actual.length, expected.length, `${message}: length ${actual.length} vs ${expected.length}`);
  expected.forEach((value, k) => close(actual[k], value, `${message}[${k}]`));
}

function advantagesOf(result: ReturnType<typeof computeAdvantages>): number[][] {
  return result.episodes.map((e) => e.advantages.map((a) => a.advantage));
}

// ---------------------------------------------------------------------------------------------------------
// §5.9 worked example

/** The sample's three turns: 6/4/4 items, C2, C3, C5 depend on C1 in turn 0. */
const SAMPLE: RewardChecklist = [
  [
    item("C0", 0.25, [], true),
    item("C1", 0.2, [], true),
    item("C2", 0.2, ["C1"], true),
    item("C3", 0.2, ["C1"], true),
    item("C4", 0.1),
    item("C5", 0.05, ["C1"]),
  ],
  [item("C0", 0.45, [], true), item("C1", 0.2), item("C2", 0.25), item("C3", 0.1)],
  [item("C0", 0.3, [], true), item("C1", 0.2), item("C2", 0.4), item("C3", 0.1)],
];

Deno.test("turnPassed() fails the worked example's turn 0 because required C3 is never true", () => {
  const steps = [{ sat: [true, true, false, false, false, false] }, {
    sat: [true, true, true, false, true, false],
  }];
  assert.equal(turnPassed(SAMPLE[0]!, steps), false);
  assert.equal(turnPassed(SAMPLE[0]!, [...steps, { sat: [false, false, false, true, false, false] }]), true);
});

Deno.test("turnPassed() ignores dependencies and non-required items", () => {
  const items = [item("A", 0.5, [], true), item("B", 0.5, ["A"], true)];
  // B is true at step 0, before A holds; the gate still counts it.
  assert.equal(turnPassed(items, [{ sat: [false, true] }, { sat: [true, false] }]), true);
  assert.equal(turnPassed([item("A", 1)], []), true);
  assert.equal(turnPassed(items, []), false);
  assert.throws(() => turnPassed(items, [{ sat: [true] }]), /Step 0 has 1 verdicts, expected 2/);
});

Deno.test("computeAdvantages() reproduces the worked example of §5.9 (trajectory level, reference)", () => {
  const result = computeAdvantages({
    checklist: SAMPLE,
    episodes: [
      // S_0 = .25 + .2 + .2 + .1 = .75, gate fails: R = .75 / 3 = .25
      episode(true, [["110000", "111010"]]),
      // S = .75, 1, .6 (C0 + C1 + C3 = .3 + .2 + .1): R = 2.35 / 3 ≈ .7833
      episode(true, [["110000", "111010"], ["1111"], ["1101"]]),
      // failed: R = 0, kept in the mean
      episode(false, [["1"]], false),
      // S = 1, 1, .9 (all but C3): R = 2.9 / 3 ≈ .9667; mean = (.25 + .78333 + 0 + .96667) / 4 = .5
      episode(true, [["111111"], ["1111"], ["1110"]]),
    ],
  }, { preset: "reference" });
  const [first, second, failed, fourth] = result.episodes;
  close(first?.reward, 0.25, "R first");
  closeAll(first!.turnScores, [0.75, 0, 0], "S first");
  close(second?.reward, 0.78333333333333333, "R second");
  close(fourth?.reward, 2.9 / 3, "R fourth");
  close(result.stats.trajectory.mean, 0.5, "group mean");
  // −.25 on every assistant step of the first rollout
  closeAll(first!.advantages.map((a) => a.advantage), [-0.25, -0.25], "A first");
  // the failed rollout keeps its tokens with advantage 0 − .5
  closeAll(failed!.advantages.map((a) => a.advantage), [-0.5], "A failed");
  assert.equal(failed?.excluded, false);
});

// ---------------------------------------------------------------------------------------------------------
// A small scenario with a dependency, a same-step dependency, an unfinished turn and a failed episode.
//
// Turn 0: A (.5, required), B (.3, depends on A), C (.2).   Turn 1: X (.6, required), Y (.4, depends on X).
// E1: turn 0 steps [A B], [A B C]; turn 1 steps [Y], [X Y].
//     pre-step verdicts (paper, fixed): A@0, C@1, B never (true at step 0 before A held, and never flips again)
//       | X@1, Y never (true before X held).
//     before-step completion: A@0, B@1, C@1 | X@1, Y never eligible.  item-order: A@0, B@0, C@1 | X@1, Y@1.
// E2: turn 0 steps [], [A], [A B]; turn 1 unfinished, one step [X].  Completion: A@1, B@2, C eligible, never.
// E3: turn 0 one step [C] (gate fails).  A eligible never done, B never eligible, C@0.
// E4: failed after one step.

const SCENARIO: RewardChecklist = [
  [item("A", 0.5, [], true), item("B", 0.3, ["A"]), item("C", 0.2)],
  [item("X", 0.6, [], true), item("Y", 0.4, ["X"])],
];
const E1 = episode(true, [["110", "111"], ["01", "11"]]);
const E2 = episode(true, [["000", "100", "110"], ["10"]], false);
const E3 = episode(true, [["001"]]);
const E4 = episode(false, [["100"]], false);
const GROUP = { checklist: SCENARIO, episodes: [E1, E2, E3, E4] };

Deno.test("computeAdvantages() gives message indices of every assistant step in order", () => {
  const result = computeAdvantages(GROUP, { preset: "reference" });
  assert.deepEqual(result.episodes.map((e) => e.advantages.map((a) => a.messageIndex)), [
    [2, 4, 7, 9],
    [2, 4, 6, 9],
    [2],
    [2],
  ]);
});

Deno.test("computeAdvantages() trajectory level, reference: OR over steps, T_ref divisor, failed kept at 0", () => {
  const result = computeAdvantages(GROUP, { preset: "reference" });
  // E1: S = 1 (A+B+C), 1 (X+Y by OR) → R = 2/2 = 1
  // E2: S = .8 (A+B), unfinished turn 1 → no credit → R = .8/2 = .4
  // E3: S = .2 → R = .2/2 = .1;  E4 failed → 0.  mean = 1.5/4 = .375
  closeAll(result.episodes.map((e) => e.reward), [1, 0.4, 0.1, 0], "R");
  closeAll(result.episodes[0]!.turnScores, [1, 1], "S E1");
  closeAll(result.episodes[1]!.turnScores, [0.8, 0], "S E2");
  close(result.stats.trajectory.mean, 0.375, "mean");
  assert.equal(result.stats.trajectory.support, 4);
  assert.deepEqual(advantagesOf(result).map((a) => a.map((v) => Math.round(v * 1e9) / 1e9)), [
    [0.625, 0.625, 0.625, 0.625], // 1 − .375
    [0.025, 0.025, 0.025, 0.025], // .4 − .375
    [-0.275], // .1 − .375
    [-0.375], // 0 − .375
  ]);
  assert.deepEqual(result.episodes.map((e) => e.excluded), [false, false, false, false]);
});

Deno.test("computeAdvantages() trajectory level, paper: eq. 2 on raw verdicts, reached-turn divisor, failed dropped", () => {
  const result = computeAdvantages(GROUP, { preset: "paper" });
  // E1: S_0 = .7 (A@0, C@1; B was true before A held and never flips); S_1 = .6 (X@1) → (.7+.6)/2 = .65
  // E2: S_0 = .8 (A@1, B@2); turn 1 judged: X → .6 → (.8+.6)/2 = .7
  // E3: .2 / 1 reached turn = .2.   mean over E1..E3 = 1.55/3
  closeAll(result.episodes.map((e) => e.reward), [0.65, 0.7, 0.2, 0], "R");
  closeAll(result.episodes[0]!.turnScores, [0.7, 0.6], "S E1");
  const mean = 1.55 / 3;
  closeAll(advantagesOf(result)[0]!, [0.65 - mean, 0.65 - mean, 0.65 - mean, 0.65 - mean], "A E1");
  closeAll(advantagesOf(result)[2]!, [0.2 - mean], "A E3");
  closeAll(advantagesOf(result)[3]!, [0], "A E4");
  assert.equal(result.episodes[3]!.excluded, true);
  assert.equal(result.stats.trajectory.support, 3);
});

Deno.test("computeAdvantages() trajectory level, paper with before-step completion: dependencies from paid items", () => {
  const result = computeAdvantages(GROUP, { preset: "paper", dependencyTiming: "before-step" });
  // E1: S_0 = 1 (B completes at step 1, after A at step 0); S_1 = .6 (Y true only before X held) → (1+.6)/2 = .8
  // E2: S_0 = .8; turn 1 judged: X → .6 → (.8+.6)/2 = .7
  // E3: .2 / 1 reached turn = .2.   mean over E1..E3 = 1.7/3
  closeAll(result.episodes.map((e) => e.reward), [0.8, 0.7, 0.2, 0], "R");
  closeAll(result.episodes[0]!.turnScores, [1, 0.6], "S E1");
  const mean = 1.7 / 3;
  closeAll(advantagesOf(result)[0]!, [0.8 - mean, 0.8 - mean, 0.8 - mean, 0.8 - mean], "A E1"); // .2333
  closeAll(advantagesOf(result)[2]!, [0.2 - mean], "A E3"); // −.3667
  closeAll(advantagesOf(result)[3]!, [0], "A E4");
  assert.equal(result.episodes[3]!.excluded, true);
  assert.equal(result.stats.trajectory.support, 3);
});

Deno.test("computeAdvantages() trajectory level, fixed: eq. 2 on raw verdicts, T_ref divisor, unfinished turn judged", () => {
  const result = computeAdvantages(GROUP, { preset: "fixed" });
  // E1 (.7+.6)/2 = .65, E2 (.8+.6)/2 = .7, E3 .2/2 = .1; mean = 1.45/3
  closeAll(result.episodes.map((e) => e.reward), [0.65, 0.7, 0.1, 0], "R");
  closeAll(
    advantagesOf(result)[1]!,
    [0.7 - 1.45 / 3, 0.7 - 1.45 / 3, 0.7 - 1.45 / 3, 0.7 - 1.45 / 3],
    "A E2",
  );
  closeAll(advantagesOf(result)[2]!, [0.1 - 1.45 / 3], "A E3");
  assert.equal(result.episodes[3]!.excluded, true);
});

Deno.test("computeAdvantages() trajectory level, fixed with before-step completion", () => {
  const result = computeAdvantages(GROUP, { preset: "fixed", dependencyTiming: "before-step" });
  // E1 (1+.6)/2 = .8, E2 (.8+.6)/2 = .7, E3 .2/2 = .1; mean = 1.6/3 = .5333
  closeAll(result.episodes.map((e) => e.reward), [0.8, 0.7, 0.1, 0], "R");
  closeAll(advantagesOf(result)[1]!, [0.7 - 1.6 / 3, 0.7 - 1.6 / 3, 0.7 - 1.6 / 3, 0.7 - 1.6 / 3], "A E2"); // .1667
  closeAll(advantagesOf(result)[2]!, [0.1 - 1.6 / 3], "A E3"); // −.4333
  assert.equal(result.episodes[3]!.excluded, true);
});

Deno.test("computeAdvantages() trajectory level with Fnorm std divides by the unbiased std + 1e-6", () => {
  const result = computeAdvantages(GROUP, { preset: "reference", fnorm: "std" });
  // R = 1, .4, .1, 0; deviations .625, .025, −.275, −.375;
  // squares .390625 + .000625 + .075625 + .140625 = .6075; /3 = .2025 → std .45
  close(result.stats.trajectory.std, 0.45, "std");
  close(advantagesOf(result)[0]![0], 0.625 / 0.450001, "A E1");
  close(advantagesOf(result)[3]![0], -0.375 / 0.450001, "A E4");
});

Deno.test("computeAdvantages() trajectory level: a lone episode gets A = R under verl's rule, 0 otherwise", () => {
  const lone = { checklist: SCENARIO, episodes: [E2] };
  // reference: verl GRPO uses mean 0, std 1 for a singleton group → A = R = .4
  closeAll(advantagesOf(computeAdvantages(lone, { preset: "reference" }))[0]!, [0.4, 0.4, 0.4, 0.4], "verl");
  closeAll(advantagesOf(computeAdvantages(lone, { preset: "fixed" }))[0]!, [0, 0, 0, 0], "fixed");
});

Deno.test("computeAdvantages() turn level, reference: mean over holders, failed episodes get 0", () => {
  const result = computeAdvantages(GROUP, { preset: "reference", level: "turn", minGroupSupport: 1 });
  // turn 0 holders E1, E2, E3: r = 1, .8, .2 → mean 2/3 → A = 1/3, 2/15, −7/15
  // turn 1 holders E1, E2 (E2's unfinished turn scores 0): r = 1, 0 → mean .5 → A = .5, −.5
  closeAll(advantagesOf(result)[0]!, [1 / 3, 1 / 3, 0.5, 0.5], "A E1");
  closeAll(advantagesOf(result)[1]!, [2 / 15, 2 / 15, 2 / 15, -0.5], "A E2");
  closeAll(advantagesOf(result)[2]!, [-7 / 15], "A E3");
  closeAll(advantagesOf(result)[3]!, [0], "A E4");
  assert.equal(result.episodes[3]!.excluded, false); // keep-zero: in the loss with advantage 0
  assert.deepEqual(result.stats.turns.map((t) => t.support), [3, 2]);
});

Deno.test("computeAdvantages() turn level, paper: mean over all G, unreached turns count as 0", () => {
  const result = computeAdvantages(GROUP, { preset: "paper", level: "turn" });
  // turn 0: r = .7, .8, .2 over E1..E3 → mean 1.7/3 → A = 2/15, 7/30, −11/30
  // turn 1: r = .6 (E1), .6 (E2 judged), 0 (E3 unreached) → mean .4 → A = .2, .2
  closeAll(advantagesOf(result)[0]!, [2 / 15, 2 / 15, 0.2, 0.2], "A E1");
  closeAll(advantagesOf(result)[1]!, [7 / 30, 7 / 30, 7 / 30, 0.2], "A E2");
  closeAll(advantagesOf(result)[2]!, [-11 / 30], "A E3");
  assert.deepEqual(result.stats.turns.map((t) => t.support), [3, 3]);
});

Deno.test("computeAdvantages() turn level, paper with before-step completion", () => {
  const result = computeAdvantages(GROUP, {
    preset: "paper",
    level: "turn",
    dependencyTiming: "before-step",
  });
  // turn 0: r = 1, .8, .2 over E1..E3 → mean 2/3
  // turn 1: r = .6 (E1, Y not credited), .6 (E2 judged), 0 (E3 unreached) → mean .4 → A = .2, .2
  closeAll(advantagesOf(result)[0]!, [1 / 3, 1 / 3, 0.2, 0.2], "A E1");
  closeAll(advantagesOf(result)[1]!, [2 / 15, 2 / 15, 2 / 15, 0.2], "A E2");
  closeAll(advantagesOf(result)[2]!, [-7 / 15], "A E3");
  assert.deepEqual(result.stats.turns.map((t) => t.support), [3, 3]);
});

Deno.test("computeAdvantages() turn level, fixed: holders with dependencies and judged unfinished turn", () => {
  const result = computeAdvantages(GROUP, { preset: "fixed", level: "turn", minGroupSupport: 1 });
  // turn 0 as paper's (.7, .8, .2); turn 1 holders E1 (.6), E2 (.6) → mean .6 → A = 0, 0
  closeAll(advantagesOf(result)[0]!, [2 / 15, 2 / 15, 0, 0], "A E1");
  closeAll(advantagesOf(result)[1]!, [7 / 30, 7 / 30, 7 / 30, 0], "A E2");
  const strict = computeAdvantages(GROUP, {
    preset: "fixed",
    level: "turn",
    minGroupSupport: 1,
    dependencyTiming: "before-step",
  });
  // with before-step completion E1's turn 0 scores 1 (B credited once A paid): r = 1, .8, .2
  closeAll(advantagesOf(strict)[0]!, [1 / 3, 1 / 3, 0, 0], "A E1 before-step");
  closeAll(advantagesOf(strict)[1]!, [2 / 15, 2 / 15, 2 / 15, 0], "A E2 before-step");
});

Deno.test("computeAdvantages() turn level needs more than minGroupSupport holders", () => {
  // default reference threshold 4: three holders → every advantage is 0
  assert.ok(
    advantagesOf(computeAdvantages(GROUP, { preset: "reference", level: "turn" })).flat().every((a) =>
      a === 0
    ),
  );
  // five holders of turn 0 (E3 three times) but only two of turn 1
  const five = { checklist: SCENARIO, episodes: [E1, E2, E3, E3, E3] };
  const result = computeAdvantages(five, { preset: "reference", level: "turn" });
  // turn 0: r = 1, .8, .2, .2, .2 → mean 2.4/5 = .48; turn 1: 2 holders ≤ 4 → 0
  closeAll(advantagesOf(result)[0]!, [0.52, 0.52, 0, 0], "A E1");
  closeAll(advantagesOf(result)[1]!, [0.32, 0.32, 0.32, 0], "A E2");
  closeAll(advantagesOf(result)[4]!, [-0.28], "A E3");
});

Deno.test("computeAdvantages() step level, reference: conditioned baseline, no Σw, same-step dependency edge case", () => {
  const result = computeAdvantages(GROUP, { preset: "reference", level: "step", minGroupSupport: 1 });
  // Turn 0 scores (1 completed, 0 eligible only, – never eligible), item-order walk:
  //   A: 1, 1, 0 → b = 2/3;  B: 1 (with A at the same step), 1, – → b = 1;  C: 1, 0, 1 → b = 2/3
  // E1 s0: E = {A, C} (B's dependency not done before s0): .5(1 − 2/3) + .2(1 − 2/3) = .2333
  // E1 s1: E = {C} (A, B done at s0; B never gets a step advantage): .2(1 − 2/3) = .0667
  // Turn 1 (E2's unfinished turn read as all false): X: 1, 0 → b = .5; Y: 1, – → support 1 ≤ 1 → 0
  // E1 s0, s1: E = {X} (done at s1, backfilled to s0): .6(1 − .5) = .3
  closeAll(advantagesOf(result)[0]!, [0.7 / 3, 0.2 / 3, 0.3, 0.3], "A E1");
  // E2 s0, s1: E = {A, C}: .5(1 − 2/3) + .2(0 − 2/3) = .0333;  s2: E = {B, C}: .3(1 − 1) − .1333 = −.1333
  // E2 turn 1 s0: .6(0 − .5) = −.3
  closeAll(advantagesOf(result)[1]!, [0.1 / 3, 0.1 / 3, -0.4 / 3, -0.3], "A E2");
  // E3 s0: E = {A, C}: .5(0 − 2/3) + .2(1 − 2/3) = −.2667
  closeAll(advantagesOf(result)[2]!, [-0.8 / 3], "A E3");
  closeAll(advantagesOf(result)[3]!, [0], "A E4");
  assert.deepEqual(result.stats.items[0]!.map((s) => s.support), [3, 2, 3]);
  assert.deepEqual(result.stats.items[1]!.map((s) => s.support), [2, 1]);
});

Deno.test("computeAdvantages() step level, paper: all-G baseline, Σw division, eligibility from pre-step verdicts", () => {
  const result = computeAdvantages(GROUP, { preset: "paper", level: "step" });
  // Turn 0 paying indicators over E1..E3: A 1,1,0 → b = 2/3; B 0,1,0 → b = 1/3; C 1,0,1 → b = 2/3
  // E1 s0: E = {A, C} (A not held before s0): (.5/3 + .2/3) / .7 = 1/3
  // E1 s1: E = {C} (A paid; B was already true before s1, so it cannot flip): .2(1/3) / .2 = 1/3
  // Turn 1 indicators: X 1, 1 (judged), 0 (unreached) → b = 2/3; Y never pays → b = 0, never eligible
  // E1 s0, s1: E = {X} (pays at s1, backfilled): .6(1/3) / .6 = 1/3
  closeAll(advantagesOf(result)[0]!, [1 / 3, 1 / 3, 1 / 3, 1 / 3], "A E1");
  // E2 s0, s1: (.5(1/3) + .2(−2/3)) / .7 = 1/21;  s2: E = {B, C}: (.3(2/3) − .2(2/3)) / .5 = 2/15
  // E2 turn 1 s0: X pays at s0: .6(1/3) / .6 = 1/3
  closeAll(advantagesOf(result)[1]!, [1 / 21, 1 / 21, 2 / 15, 1 / 3], "A E2");
  // E3 s0: (.5(−2/3) + .2(1/3)) / .7 = −8/21
  closeAll(advantagesOf(result)[2]!, [-8 / 21], "A E3");
  assert.equal(result.episodes[3]!.excluded, true);
  assert.deepEqual(result.stats.items[0]!.map((m) => Math.round(m.mean * 3)), [2, 1, 2]);
});

Deno.test("computeAdvantages() step level, paper with before-step completion", () => {
  const result = computeAdvantages(GROUP, {
    preset: "paper",
    level: "step",
    dependencyTiming: "before-step",
  });
  // Turn 0 completion indicators over E1..E3 (before-step): A 1,1,0; B 1,1,0; C 1,0,1 → every b = 2/3
  // E1 s0: E = {A, C}: (.5/3 + .2/3) / .7 = 1/3;  s1: E = {B, C}: (.3/3 + .2/3) / .5 = 1/3
  // Turn 1 indicators: X 1, 1 (judged), 0 (unreached) → b = 2/3; Y never completed → b = 0, never eligible
  // E1 s0, s1: E = {X} (completed at s1, backfilled): .6(1/3) / .6 = 1/3
  closeAll(advantagesOf(result)[0]!, [1 / 3, 1 / 3, 1 / 3, 1 / 3], "A E1");
  // E2 s0, s1: (.5(1/3) + .2(−2/3)) / .7 = (.1/3)/.7 = 1/21;  s2: E = {B, C}: (.3(1/3) − .2(2/3)) / .5 = −1/15
  // E2 turn 1 s0: X done at s0: .6(1/3) / .6 = 1/3
  closeAll(advantagesOf(result)[1]!, [1 / 21, 1 / 21, -1 / 15, 1 / 3], "A E2");
  // E3 s0: (.5(−2/3) + .2(1/3)) / .7 = (−.8/3)/.7 = −8/21
  closeAll(advantagesOf(result)[2]!, [-8 / 21], "A E3");
  assert.equal(result.episodes[3]!.excluded, true);
});

Deno.test("computeAdvantages() step level, fixed: pre-step verdicts, conditioned baseline, judged unfinished turn", () => {
  const result = computeAdvantages(GROUP, { preset: "fixed", level: "step", minGroupSupport: 1 });
  // Turn 0 (conditioned on eligibility): A 1,1,0 → 2/3; B –,1,– → support 1, adds 0; C 1,0,1 → 2/3
  // E1 s0: E = {A, C}: .7/3;  s1: E = {C} (B was true before s1, so it cannot flip): .2/3
  // Turn 1: X 1 (E1), 1 (E2 judged) → b = 1 → 0;  Y never eligible (support 0) → nothing
  closeAll(advantagesOf(result)[0]!, [0.7 / 3, 0.2 / 3, 0, 0], "A E1");
  closeAll(advantagesOf(result)[1]!, [0.1 / 3, 0.1 / 3, -0.4 / 3, 0], "A E2");
  closeAll(advantagesOf(result)[2]!, [-0.8 / 3], "A E3");
});

Deno.test("computeAdvantages() backfills a delayed item to eligible steps with eta^delay", () => {
  const result = computeAdvantages(GROUP, { preset: "paper", level: "step", eta: 0.5 });
  // E1 s0: A done at s0 → r̃ = 1: .5(1 − 2/3); C done at s1 → r̃ = .5: .2(.5 − 2/3) → (.1667 − .0333)/.7 = .1905
  close(advantagesOf(result)[0]![0], (0.5 / 3 - 0.2 / 6) / 0.7, "E1 s0");
  // E2 s0: A done at s1 → r̃ = .5: .5(.5 − 2/3) = −.0833; C never: −.1333 → −.2167/.7 = −.3095
  close(advantagesOf(result)[1]![0], (-0.5 / 6 - 0.4 / 3) / 0.7, "E2 s0");
  // E2 s1: A done at s1 → r̃ = 1: .1667 − .1333 = .0333 → /.7 = 1/21
  close(advantagesOf(result)[1]![1], 1 / 21, "E2 s1");
});

Deno.test("computeAdvantages() step level, paper with Fnorm std divides each item by its own std", () => {
  const result = computeAdvantages(GROUP, { preset: "paper", level: "step", fnorm: "std" });
  // every turn-0 indicator set is {1, 1, 0}: unbiased var = (1/9 + 1/9 + 4/9) / 2 = 1/3
  const f = Math.sqrt(1 / 3) + 1e-6;
  // E1 s0: (.5(1/3)/f + .2(1/3)/f) / .7 = (1/3)/f
  close(advantagesOf(result)[0]![0], 1 / 3 / f, "E1 s0");
  // reference never scales step advantages
  const reference = computeAdvantages(GROUP, {
    preset: "reference",
    level: "step",
    minGroupSupport: 1,
    fnorm: "std",
  });
  close(advantagesOf(reference)[0]![0], 0.7 / 3, "reference E1 s0");
});

Deno.test("computeAdvantages() step level gives 0 when an item's support is at most minGroupSupport", () => {
  const result = computeAdvantages(GROUP, { preset: "reference", level: "step" }); // threshold 4, support ≤ 3
  assert.ok(advantagesOf(result).flat().every((a) => a === 0));
  // Σw still counts a below-threshold item: support of B is 2, of A and C is 3; threshold 2 keeps only A, C
  const divided = computeAdvantages(GROUP, {
    preset: "reference",
    level: "step",
    minGroupSupport: 2,
    divideBySumWeights: true,
  });
  // E2 s2: E = {B, C}: B below threshold adds 0, C adds .2(0 − 2/3); Σw = .5 → −.2667
  close(advantagesOf(divided)[1]![2], -0.4 / 3 / 0.5, "E2 s2");
});

Deno.test("computeAdvantages() credits no item before its dependencies hold (paper and fixed)", () => {
  // B depends on A; B is judged true only at step 0, A only at step 1.
  const checklist: RewardChecklist = [[item("A", 0.5), item("B", 0.5, ["A"])]];
  const group = { checklist, episodes: [episode(true, [["01", "10"]]), episode(true, [["00", "00"]])] };
  for (const preset of ["paper", "fixed"] as const) {
    const result = computeAdvantages(group, { preset });
    closeAll(result.episodes[0]!.turnScores, [0.5], `${preset} S`); // only A
  }
  // the reference OR credits B anyway
  closeAll(computeAdvantages(group, { preset: "reference" }).episodes[0]!.turnScores, [1], "reference S");
});

Deno.test("computeAdvantages() §5.10 check case: a dependent judged true before its dependency held never pays", () => {
  // A (.5), B (.5, depends on A). Step 0 {B}, step 1 {A, B}, step 2 {A, B}: B flips at step 0 while A does not
  // hold and never flips again; A pays at step 1. Eq. 2 gives S = .5.
  const checklist: RewardChecklist = [[item("A", 0.5), item("B", 0.5, ["A"])]];
  const group = { checklist, episodes: [episode(true, [["01", "11", "11"]])] };
  for (const preset of ["paper", "fixed"] as const) {
    closeAll(computeAdvantages(group, { preset }).episodes[0]!.turnScores, [0.5], preset);
  }
  // crediting B once A is completed is the out-of-order guess the dependency exists to deny
  const strict = computeAdvantages(group, { preset: "paper", dependencyTiming: "before-step" });
  closeAll(strict.episodes[0]!.turnScores, [1], "before-step");
  closeAll(computeAdvantages(group, { preset: "reference" }).episodes[0]!.turnScores, [1], "reference");
  // step level: B is never in E_s (true in every pre-step state once A holds), A is in E_0 and E_1
  const two = { checklist, episodes: [group.episodes[0]!, episode(true, [["00", "00", "00"]])] };
  const steps = computeAdvantages(two, { preset: "paper", level: "step" });
  // A: indicators 1, 0 → b = .5; B: 0, 0 → b = 0. E1 s0, s1: E = {A}: .5(1 − .5) / .5 = .5; s2: E = {} → 0
  closeAll(advantagesOf(steps)[0]!, [0.5, 0.5, 0], "A E1");
});

Deno.test("computeAdvantages() pays an item once, at its first paying flip (paper, fixed)", () => {
  // A (no dependencies) true, false, true: two flips from false to true; it pays at step 0 only.
  const checklist: RewardChecklist = [[item("A", 0.6), item("B", 0.4, ["A"])]];
  const flaky = episode(true, [["10", "00", "10", "01"]]); // B flips at 3, but A was true before step 3 again
  const other = episode(true, [["00", "00", "00", "00"]]);
  for (const preset of ["paper", "fixed"] as const) {
    closeAll(
      computeAdvantages({ checklist, episodes: [flaky] }, { preset }).episodes[0]!.turnScores,
      [1],
      preset,
    );
  }
  const steps = computeAdvantages({ checklist, episodes: [flaky, other] }, {
    preset: "paper",
    level: "step",
  });
  // A: 1, 0 → b = .5; B: 1, 0 → b = .5. s0: E = {A}: .6(.5)/.6 = .5; s1, s2: A paid, B needs A before the step:
  // s1: A false at s0? no, A true at s0 → B eligible at s1 (pays at 3, backfilled): .4(.5)/.4 = .5;
  // s2: A false at s1 → E = {} → 0; s3: A true at s2, B false at s2 → E = {B}: .5
  closeAll(advantagesOf(steps)[0]!, [0.5, 0.5, 0, 0.5], "A flaky");
});

// ---------------------------------------------------------------------------------------------------------
// Options, validation and pass rates

Deno.test("resolveRewardOptions() starts from the preset and applies overrides", () => {
  const options = resolveRewardOptions({ preset: "reference", minGroupSupport: 1, eta: undefined });
  assert.equal(options.level, "trajectory");
  assert.equal(options.minGroupSupport, 1);
  assert.equal(options.eta, 1);
  assert.equal(options.unfinishedTurn, "no-credit");
  assert.equal(resolveRewardOptions().preset, "fixed");
  assert.equal(REWARD_PRESETS.paper.divideBySumWeights, true);
  assert.throws(() => resolveRewardOptions({ fnorm: 2 as unknown as 1 }), /Reward option fnorm is 2/);
  assert.throws(() => resolveRewardOptions({ minGroupSupport: -1 }), /minGroupSupport is -1/);
  assert.throws(() => resolveRewardOptions({ eta: 1.5 }), /eta is 1.5/);
});

Deno.test("computeAdvantages() rejects malformed checklists and verdicts", () => {
  const bad = (checklist: RewardChecklist, episodes: EpisodeVerdicts[]) => () =>
    computeAdvantages({ checklist, episodes });
  assert.throws(
    bad([[item("A", 0.5), item("B", 0.3)]], []),
    /Checklist weights of turn 0 sum to 0.8, expected 1/,
  );
  assert.throws(bad([[item("A", 1, ["Z"])]], []), /item A of turn 0 depends on unknown item Z/);
  assert.throws(bad([[item("A", 0.5), item("A", 0.5)]], []), /repeats item id A/);
  assert.throws(
    bad(SCENARIO, [episode(true, [["11"]])]),
    /Step 0 of turn 0 in episode 0 has 2 verdicts, expected 3/,
  );
  assert.throws(bad(SCENARIO, [episode(true, [["111"], ["11"], ["11"]])]), /has 3 turns, expected at most 2/);
  assert.throws(
    bad(SCENARIO, [episode(true, [[], ["11"]])]),
    /Turn 0 of episode 0 is unfinished but not the last/,
  );
  // a failed episode's partial data is not read
  assert.doesNotThrow(bad(SCENARIO, [episode(false, [["1"], ["1"], ["1"]])]));
});

Deno.test("itemPassRate() counts credited items over ok episodes that reached the turn", () => {
  const rates = itemPassRate(SCENARIO, [E1, E2, E3, E4]);
  // turn 0, ok episodes E1..E3: A E1 E2; B E1 E2; C E1 E3
  assert.deepEqual(rates[0]!.map((r) => [r.id, r.passed, r.reached]), [["A", 2, 3], ["B", 2, 3], [
    "C",
    2,
    3,
  ]]);
  // turn 1 reached by E1, E2: X both; Y only E1 (true at a step, OR)
  assert.deepEqual(rates[1]!.map((r) => r.rate), [1, 0.5]);
  // with dependencies E1's Y never counts
  assert.deepEqual(itemPassRate(SCENARIO, [E1, E2], { dependencies: "before-step" })[1]!.map((r) => r.rate), [
    1,
    0,
  ]);
  assert.equal(itemPassRate(SCENARIO, [E3])[1]![0]!.rate, null);
});

// ---------------------------------------------------------------------------------------------------------
// Property tests over random groups

interface RandomGroup {
  checklist: RewardChecklist;
  episodes: EpisodeVerdicts[];
}

function randomGroup(random: () => number, options: { allOk?: boolean; size?: number } = {}): RandomGroup {
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const checklist = Array.from({ length: int(1, 4) }, () => {
    const n = int(1, 5);
    const raw = Array.from({ length: n }, () => 0.05 + random());
    const total = raw.reduce((a, b) => a + b, 0);
    return raw.map((w, c) => {
      // dependencies on other items of the turn (cycles allowed, never itself)
      const others = Array.from({ length: n }, (_, d) => d).filter((d) => d !== c && random() < 0.3);
      return item(`C${c}`, w / total, others.map((d) => `C${d}`), random() < 0.5);
    });
  });
  const episodes = Array.from({ length: options.size ?? int(2, 8) }, () => {
    const reached = int(0, checklist.length);
    const turns = checklist.slice(0, reached).map((items) =>
      Array.from({ length: int(1, 4) }, () => items.map(() => (random() < 0.5 ? "1" : "0")).join(""))
    );
    return episode(options.allOk === true || random() < 0.85, turns, random() < 0.6);
  });
  return { checklist, episodes };
}

const PRESETS = ["reference", "paper", "fixed"] as const;
const LEVELS = ["trajectory", "turn", "step"] as const;

Deno.test("computeAdvantages() keeps every trajectory reward in [0, 1] (200 random groups)", () => {
  const random = prng(1);
  for (let k = 0; k < 200; k++) {
    const group = randomGroup(random);
    for (const preset of PRESETS) {
      for (
        const result of [computeAdvantages(group, { preset }), computeAdvantages(group, { preset, eta: 0.7 })]
      ) {
        for (const e of result.episodes) {
          assert.ok(e.reward >= 0 && e.reward <= 1 + 1e-12, `group ${k} ${preset}: R = ${e.reward}`);
          assert.ok(e.turnScores.every((s) => s >= 0 && s <= 1 + 1e-12), `group ${k} ${preset}: S`);
        }
      }
    }
  }
});

Deno.test("computeAdvantages() trajectory advantages sum to 0 within a group of ok episodes with Fnorm 1", () => {
  const random = prng(2);
  for (let k = 0; k < 200; k++) {
    const group = randomGroup(random, { allOk: true });
    for (const preset of PRESETS) {
      const result = computeAdvantages(group, { preset, level: "trajectory" });
      // one advantage per episode (the value on its steps); an episode without steps still has one
      const perEpisode = result.episodes.map((e) => e.reward - result.stats.trajectory.mean);
      const onSteps = result.episodes.map((e) => e.advantages[0]?.advantage);
      onSteps.forEach((a, i) =>
        a !== undefined && close(a, perEpisode[i]!, `group ${k} ${preset} episode ${i}`)
      );
      const sum = perEpisode.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum) < 1e-9, `group ${k} ${preset}: sum ${sum}`);
      for (const e of result.episodes) assert.ok(new Set(e.advantages.map((a) => a.advantage)).size <= 1);
    }
  }
});

Deno.test("computeAdvantages() turn advantages sum to 0 over each turn's holders with Fnorm 1", () => {
  const random = prng(3);
  for (let k = 0; k < 200; k++) {
    const group = randomGroup(random, { allOk: true });
    const result = computeAdvantages(group, { preset: "fixed", level: "turn", minGroupSupport: 1 });
    group.checklist.forEach((_, t) => {
      let sum = 0;
      result.episodes.forEach((e, i) => {
        const turn = group.episodes[i]!.turns[t];
        const first = turn?.steps[0];
        if (first === undefined) return;
        sum += e.advantages.find((a) => a.messageIndex === first.messageIndex)!.advantage;
      });
      assert.ok(Math.abs(sum) < 1e-9, `group ${k} turn ${t}: sum ${sum}`);
    });
  }
});

Deno.test("computeAdvantages() never credits an item judged true before its dependencies hold (paper, fixed)", () => {
  const random = prng(4);
  let referenceChanged = 0;
  for (let k = 0; k < 200; k++) {
    const group = randomGroup(random);
    // Rewrite, at random, an item's verdicts at every step before the first step by which all its dependencies
    // were first judged true (computed from the original verdicts). The item cannot pay there, nor up to that
    // step; under eq. 2 on raw verdicts its verdict at that step is its pre-step state for the next, so it stays.
    const mutated: RandomGroup = {
      checklist: group.checklist,
      episodes: group.episodes.map((ep) => ({
        ok: ep.ok,
        turns: ep.turns.map((turn, t) => {
          const items = group.checklist[t]!;
          const firstTrue = items.map((_, c) => {
            const s = turn.steps.findIndex((step) => step.sat[c] === true);
            return s < 0 ? Infinity : s;
          });
          // Items that others depend on keep their verdicts: eq. 2 reads them as dependencies at every step.
          const block = items.map((it) =>
            it.dependence.length === 0 || items.some((x) => x.dependence.includes(it.id))
              ? -1
              : Math.max(...it.dependence.map((id) => firstTrue[items.findIndex((x) => x.id === id)]!))
          );
          return {
            complete: turn.complete,
            steps: turn.steps.map((step, s) => ({
              messageIndex: step.messageIndex,
              sat: step.sat.map((v, c) => (s < block[c]! ? random() < 0.5 : v)),
            })),
          };
        }),
      })),
    };
    for (const preset of ["paper", "fixed"] as const) {
      for (const level of LEVELS) {
        const before = computeAdvantages(group, { preset, level, minGroupSupport: 1 }).episodes;
        const after = computeAdvantages(mutated, { preset, level, minGroupSupport: 1 }).episodes;
        assert.deepEqual(after, before, `group ${k} ${preset} ${level}`);
      }
    }
    const rewards = (g: RandomGroup) =>
      computeAdvantages(g, { preset: "reference" }).episodes.map((e) => e.reward);
    if (JSON.stringify(rewards(group)) !== JSON.stringify(rewards(mutated))) referenceChanged++;
  }
  // the mutation is not vacuous: the reference OR does see it
  assert.ok(referenceChanged > 20, `reference changed in only ${referenceChanged} groups`);
});

Deno.test("computeAdvantages() gives 0 turn and step advantages without enough group support", () => {
  const random = prng(5);
  for (let k = 0; k < 200; k++) {
    const group = randomGroup(random, { size: 1 + (k % 5) }); // 1..5 episodes
    for (const preset of PRESETS) {
      for (const level of ["turn", "step"] as const) {
        const minGroupSupport = group.episodes.length + (k % 2); // ≥ G: nothing can exceed it
        const result = computeAdvantages(group, { preset, level, minGroupSupport });
        assert.ok(advantagesOf(result).flat().every((a) => a === 0), `group ${k} ${preset} ${level}`);
      }
      // turn level: a turn reached by at most `threshold` ok episodes gets 0 on its steps
      const threshold = 2;
      const result = computeAdvantages(group, { preset, level: "turn", minGroupSupport: threshold });
      group.checklist.forEach((_, t) => {
        const holders = group.episodes.filter((e) => e.ok && (e.turns[t]?.steps.length ?? 0) > 0).length;
        const population = result.options.baselinePopulation === "all"
          ? group.episodes.filter((e) => e.ok).length
          : holders;
        if (population > threshold) return;
        group.episodes.forEach((e, i) => {
          for (const step of e.turns[t]?.steps ?? []) {
            const a = result.episodes[i]!.advantages.find((x) => x.messageIndex === step.messageIndex);
            assert.equal(a?.advantage, 0, `group ${k} ${preset} turn ${t}`);
          }
        });
      });
    }
  }
});

Deno.test("computeAdvantages() gives excluded failed episodes 0 at every level", () => {
  const random = prng(6);
  for (let k = 0; k < 100; k++) {
    const group = randomGroup(random);
    for (const level of LEVELS) {
      const result = computeAdvantages(group, { preset: "fixed", level, minGroupSupport: 0 });
      result.episodes.forEach((e, i) => {
        assert.equal(e.excluded, !group.episodes[i]!.ok);
        if (e.excluded) assert.ok(e.advantages.every((a) => a.advantage === 0) && e.reward === 0);
      });
    }
  }
});

Deno.test("items: each credited item pays its weight / divisor at its completion step, and the shares sum to R", () => {
  const episodes = [
    // turn 0: C1 at step 0, C0 and C2 (after C1) at step 1, C4 at step 2; turn 1: C0 and C2 at step 0
    episode(true, [["010000", "111000", "000010"], ["1010"]]),
    episode(false, [["111111"]]),
    episode(true, [["001000"]], false), // C2 before its dependency C1: never eligible under the paper preset
  ];
  for (const preset of ["paper", "reference"] as const) {
    const result = computeAdvantages({ checklist: SAMPLE, episodes }, { preset });
    result.episodes.forEach((e, i) => {
      const total = e.items.flat().reduce((a, x) => a + x.reward, 0);
      close(total, e.reward, `${preset} episode ${i}: item shares vs R`);
    });
    const first = result.episodes[0]!;
    assert.equal(first.items.length, SAMPLE.length);
    assert.deepEqual(first.items[0]!.map((x) => x.step), [1, 0, 1, -1, 2, -1]);
    assert.deepEqual(first.items[1]!.map((x) => x.step), [0, -1, 0, -1]);
    assert.deepEqual(first.items[2], [], "an unreached turn pays nothing");
    assert.deepEqual(result.episodes[1]!.items, [[], [], []], "a failed episode pays nothing");
  }
  const paper = computeAdvantages({ checklist: SAMPLE, episodes }, { preset: "paper" }).episodes[0]!;
  const divisor = resolveRewardOptions({ preset: "paper" }).trajectoryDivisor === "reference-turns" ? 3 : 2;
  close(paper.items[0]![0]!.reward, 0.25 / divisor, "C0's share");
});
