import assert from "node:assert/strict";
import { formatSummary } from "../../cli/run.ts";
import type { IterationSummary } from "../../workflows/training.ts";

Deno.test("an iteration line counts program-checked verdicts apart from judge calls", () => {
  const s: IterationSummary = {
    iteration: 3,
    validation: false,
    episodes: 8,
    failed: 1,
    meanReward: 0.25,
    itemPassRate: 0.5,
    judgeCalls: 12,
    checkedVerdicts: 30,
    simulatorCalls: 2,
    replayHits: 5,
    updateLoss: 0.01,
    checkpoint: null,
    policyVersion: 4,
    metricsRef: { uri: `cm2://sha256/${"0".repeat(64)}`, sha256: "0".repeat(64), bytes: 1 },
    seconds: 9.5,
  };
  assert.match(formatSummary(s), /judge 12 \(\+30 checked\), sim 2/);
  const { checkedVerdicts: _, ...older } = s;
  assert.match(formatSummary(older), /judge 12, sim 2/);
});
