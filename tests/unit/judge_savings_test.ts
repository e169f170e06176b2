import assert from "node:assert/strict";
import { rewardAgreement, runMode } from "../bench/judge.ts";
import { sampleRecords } from "../harness/training.ts";

Deno.test("program checks and absent-focus answers agree cell by cell with a judge that reads the items", async () => {
  // The reading judge (TEST DOUBLE) decides each rule item from its text and the transcript, never from a check.
  const records = await sampleRecords();
  const judged = await runMode(records, "exhaustive", false);
  const programs = await runMode(records, "exhaustive", true);
  assert.ok(
    programs.checked > programs.verdicts / 2,
    `only ${programs.checked} of ${programs.verdicts} by program`,
  );
  assert.ok(programs.calls < judged.calls / 2);
  let cells = 0;
  records.forEach((record, r) =>
    judged.states[r]!.forEach((a, e) => {
      const b = programs.states[r]![e]!;
      assert.equal(b.turns.length, a.turns.length, `${record.uuid} episode ${e}`);
      a.turns.forEach((turn, t) => {
        turn.sat[0]!.forEach((row, s) =>
          row.forEach((v, c) => {
            cells++;
            assert.equal(
              b.turns[t]!.sat[0]![s]![c],
              v,
              `${record.uuid} ep ${e} turn ${t} step ${s} item ${c}`,
            );
          })
        );
      });
    })
  );
  assert.ok(cells > 1000, `${cells} cells`);
  assert.equal(rewardAgreement(records, judged.states, programs.states), 1);
  // Every saving on (incremental too) still gives the same rewards.
  const saving = await runMode(records, "incremental", true);
  assert.equal(rewardAgreement(records, judged.states, saving.states), 1);
  assert.ok(saving.calls * 10 <= judged.calls * 3, `${saving.calls} of ${judged.calls} calls`);
});
