import assert from "node:assert/strict";
import {
  fillName,
  ORCHESTRATOR_QUEUE,
  storeNames,
  TRAINER_QUEUE,
  UPDATE_POLICY_ACTIVITY,
  WIRE_NAMES,
  workflowIds,
} from "../../core/names.ts";
import type { TrainerActivities } from "../../core/trainer_contract.ts";

// These are API: running histories and stored runs use them. A change here must be deliberate.
Deno.test("wire names keep the formats that histories and stores already use", () => {
  assert.equal(workflowIds.run("demo"), "run/demo");
  assert.equal(workflowIds.iteration("demo", 2), "run/demo/it-2");
  assert.equal(workflowIds.validation("demo", 2), "run/demo/val-2");
  assert.equal(workflowIds.episode("demo", 2, 1, 3), "run/demo/it-2/task-1/ep-3");
  assert.equal(workflowIds.episode("demo", 2, 1, 3, "val"), "run/demo/val-2/task-1/ep-3");
  assert.equal(workflowIds.label("tt-labeled"), "label/tt-labeled");
  assert.equal(storeNames.checkpoint("demo", 4), "runs/demo/checkpoints/it-4");
  assert.equal(storeNames.checkpoints("demo"), "runs/demo/checkpoints/");
  assert.equal(storeNames.metrics("demo", "it", 4), "runs/demo/metrics/it-4");
  assert.equal(storeNames.group("demo", "it", 4, 0), "runs/demo/it-4/task-0");
  assert.deepEqual([ORCHESTRATOR_QUEUE, TRAINER_QUEUE], ["cm2-orchestrator", "cm2-trainer"]);
  assert.equal(WIRE_NAMES.schema, "cm2.wire-names/v1");
});

Deno.test("the trainer's activity name is the key the workflow calls it by", () => {
  const key: keyof TrainerActivities = "updatePolicy";
  assert.equal(UPDATE_POLICY_ACTIVITY, key);
});

Deno.test("a name format with a missing field is an error, not 'undefined'", () => {
  assert.throws(() => fillName("runs/{run}/checkpoints/it-{iteration}", { run: "x" }), /needs iteration/);
});

Deno.test("the trainer package carries core/wire_names.json byte for byte", async () => {
  const root = new URL("../../", import.meta.url);
  const source = await Deno.readTextFile(new URL("core/wire_names.json", root));
  const copy = await Deno.readTextFile(new URL("trainer/cm2_trainer/wire_names.json", root));
  assert.equal(copy, source, "copy core/wire_names.json to trainer/cm2_trainer/wire_names.json");
});
