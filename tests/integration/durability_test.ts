import assert from "node:assert/strict";
import { runChaos } from "../chaos/chaos.ts";
import { useTemporal } from "../harness/temporal.ts";

Deno.test({
  name: "a run survives five kill -9s of its worker without repeating finished model calls or updates",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    try {
      const report = await runChaos({ kills: 5, seed: 11, address: temporal.address, log: () => {} });
      assert.equal(report.kills, 5);
      assert.equal(report.completed, true);
      assert.ok(
        report.repeated_calls <= report.in_flight_at_kills,
        `repeated ${report.repeated_calls} > in flight ${report.in_flight_at_kills}`,
      );
      assert.equal(report.updates_per_iteration, 1);
      assert.equal(report.rewards_match, true);
    } finally {
      await temporal.release();
    }
  },
});
