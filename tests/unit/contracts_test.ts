import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import {
  BatchSchema,
  CheckpointManifestSchema,
  UpdateRequestSchema,
  UpdateResultSchema,
} from "../../core/trainer_contract.ts";

const dir = new URL("../contracts/", import.meta.url);
const load = async (name: string) => JSON.parse(await fs.readFile(new URL(name, dir), "utf8"));

Deno.test("the trainer contract fixtures decode with the TypeScript schemas", async () => {
  const req = UpdateRequestSchema.parse(await load("update_request.json"));
  const batch = BatchSchema.parse(await load("batch.json"));
  const result = UpdateResultSchema.parse(await load("update_result.json"));
  const manifest = CheckpointManifestSchema.parse(await load("checkpoint_manifest.json"));
  assert.equal(req.runId, batch.runId);
  assert.equal(req.iteration, batch.iteration);
  assert.equal(result.iteration, req.iteration);
  assert.equal(manifest.version, result.version);
  assert.ok(
    batch.samples.every((s) => s.advantages.every((a) => s.messages[a.messageIndex]?.role === "assistant")),
  );
});

Deno.test("the TypeScript contract rejects a request with a missing field, naming it", async () => {
  const req = await load("update_request.json");
  delete req.batch;
  const parsed = UpdateRequestSchema.safeParse(req);
  assert.equal(parsed.success, false);
  assert.ok(!parsed.success && parsed.error.issues.some((i) => i.path.join(".") === "batch"));
});

Deno.test("trainer hyperparameters: one key list for config, wire and workflow; defaults pinned by the shared fixture", async () => {
  const { TRAINER_HYPERPARAM_KEYS, hyperparamsOf } = await import("../../core/trainer_params.ts");
  const { TrainerParamsSchema } = await import("../../core/trainer_contract.ts");
  const { parseRunConfig } = await import("../../core/config.ts");
  assert.deepEqual(
    Object.keys(TrainerParamsSchema.shape).sort(),
    [...TRAINER_HYPERPARAM_KEYS, "seed"].sort(),
  );
  const parsed = parseRunConfig({});
  assert.ok(parsed.ok);
  // the bridge to Python: trainer/tests/test_contract.py pins TrainerConfig's defaults to the same file
  assert.deepEqual(hyperparamsOf(parsed.config), await load("trainer_defaults.json"));
  // the reference preset trains with the released run's per-trajectory mean unless the config says otherwise
  const reference = parseRunConfig({ cm2: { preset: "reference" } });
  assert.ok(reference.ok);
  assert.equal(hyperparamsOf(reference.config).lossAgg, "seq-mean-token-mean");
  const pinned = parseRunConfig({ cm2: { preset: "reference" }, trainer: { lossAgg: "token-mean" } });
  assert.ok(pinned.ok);
  assert.equal(hyperparamsOf(pinned.config).lossAgg, "token-mean");
});

Deno.test("SFT settings: the config's defaults equal the shared fixture the Python SftConfig is pinned to", async () => {
  const { parseRunConfig } = await import("../../core/config.ts");
  const { SftParamsSchema } = await import("../../core/trainer_contract.ts");
  const parsed = parseRunConfig({});
  assert.ok(parsed.ok);
  const { dataset: _d, heldOut: _h, ...wire } = parsed.config.sft;
  assert.deepEqual(wire, await load("sft_defaults.json"));
  assert.deepEqual(Object.keys(SftParamsSchema.shape).sort(), Object.keys(wire).sort());
});
