/**
 * The short chaos run (`tests/chaos/chaos.ts`; `deno task chaos` is the full one): 2 iterations with 20% model
 * faults, 5 kill -9s of the orchestrator worker, a trainer kill during an update and a dev-server restart.
 */
import assert from "node:assert/strict";
import { chaosPassed, runChaos } from "../chaos/chaos.ts";

Deno.test({
  name:
    "a run survives kill -9s, a trainer kill, a dev-server restart and 20% model faults, losing and hiding nothing",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const report = await runChaos({
      kills: 5,
      iterations: 2,
      faults: 0.2,
      trainerKill: true,
      serverRestart: true,
      seed: 11,
      log: () => {},
    });
    const text = JSON.stringify(report);
    assert.ok(report.kills >= 5, text);
    assert.equal(report.trainer_kills, 1, text);
    assert.equal(report.server_restarts, 1, text);
    assert.ok(report.faults_injected > 0, text);
    assert.equal(report.completed, true, text);
    assert.ok(report.repeated_calls <= report.in_flight_at_kills, text);
    assert.equal(report.updates_per_iteration, 1, text);
    assert.equal(report.rewards_match, true, text);
    assert.equal(report.faults_counted, report.faults_injected, text);
    assert.equal(report.silent_zero_rewards, 0, text);
    assert.ok(chaosPassed(report), text);
  },
});
