/**
 * `cm2 config check` as a user runs it: a config that validates but cannot run here is reported finding by
 * finding (missing dataset file, unset key of a used role, unwritable store, missing trainer base, `null`), an
 * unset key of an unused role is only a warning, and a runnable config is ok.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "../../scripts/paths.ts";

async function check(file: string, env: Record<string, string> = {}) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path.join(ROOT, "client.ts"), "config", "check", file],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: r.code, err: new TextDecoder().decode(r.stderr) };
}

Deno.test("config check reports what would stop a valid config from running here", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-config-"));
  try {
    const write = async (name: string, value: unknown) => {
      const p = path.join(dir, name);
      await fs.writeFile(p, JSON.stringify(value));
      return p;
    };
    const broken = await write("broken.json", {
      dataset: { path: path.join(dir, "missing.jsonl") },
      models: {
        judge: { apiKeyEnv: "CM2_TEST_UNSET_JUDGE_KEY" },
        labeler: { apiKeyEnv: "CM2_TEST_UNSET_LABELER_KEY" },
      },
      trainer: { base: { kind: "gguf", path: path.join(dir, "no-model.gguf") } },
      store: { url: "/proc/cm2-store" }, // not writable, not even by root
    });
    const r = await check(broken);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /error: dataset\.path: no such file: .*missing\.jsonl/);
    assert.match(r.err, /error: models\.judge\.apiKeyEnv: \$CM2_TEST_UNSET_JUDGE_KEY is not set/);
    assert.match(
      r.err,
      /warning: models\.labeler\.apiKeyEnv: \$CM2_TEST_UNSET_LABELER_KEY is not set \(only/,
    );
    assert.match(r.err, /error: trainer\.base\.path: no such file: .*no-model\.gguf/);
    assert.match(r.err, /warning: store\.url: the store .* is outside the project/);
    assert.match(r.err, /error: store\.url: cannot write the store: \/proc is not writable/);

    const nul = await check(await write("null.json", null));
    assert.equal(nul.code, 1);
    assert.match(nul.err, /must be a JSON object/);

    const fine = await check(
      await write("fine.json", { name: "ok", trainer: { base: { kind: "hf", path: "org/model" } } }),
    );
    assert.equal(fine.code, 0, fine.err);
    assert.match(fine.err, /warning: trainer\.base\.path: org\/model is not a local directory/);
    assert.match(fine.err, /^ok: /m);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("the shipped recipes pass config check and carry the paper's and the released run's settings", async () => {
  const { loadRunConfig } = await import("../../config.ts");
  const { hyperparamsOf } = await import("../../core/trainer_params.ts");
  for (const name of ["demo", "paper", "reference"]) {
    const r = await check(path.join(ROOT, "recipes", `${name}.json`));
    assert.equal(r.code, 0, `${name}: ${r.err}`);
    assert.match(r.err, new RegExp(`ok: ${name}: `));
  }
  const paper = await loadRunConfig(path.join(ROOT, "recipes", "paper.json"));
  // paper §4.4: G = 48, mini-batch of 128 prompts (one optimizer step), lr 3e-6 (×10 for LoRA), KL 1e-3
  assert.deepEqual(
    [paper.cm2.preset, paper.cm2.advantageLevel, paper.cm2.groupSize, paper.cm2.tasksPerIteration],
    ["paper", "trajectory", 48, 128],
  );
  assert.deepEqual([paper.trainer.miniBatches, paper.trainer.lr, paper.trainer.klCoef], [1, 3e-5, 1e-3]);
  const reference = await loadRunConfig(path.join(ROOT, "recipes", "reference.json"));
  // the released script: n = 4, lr 1e-6 (×10 for LoRA), KL 1e-4, TIS cap 2 and veto 1e-4, per-trajectory mean
  const wire = hyperparamsOf(reference);
  assert.deepEqual(
    [
      reference.cm2.preset,
      reference.cm2.groupSize,
      reference.cm2.tasksPerIteration,
      reference.cm2.judge.mode,
    ],
    ["reference", 4, 4, "exhaustive"],
  );
  assert.deepEqual(
    [wire.lr, wire.klCoef, wire.rolloutIsCap, wire.rolloutIsVeto, wire.lossAgg],
    [1e-5, 1e-4, 2, 1e-4, "seq-mean-token-mean"],
  );
  assert.equal(reference.models.judge.sampling.max_tokens, 6000, "the reference judge's max_tokens");
  const demo = await loadRunConfig(path.join(ROOT, "recipes", "demo.json"));
  assert.deepEqual([demo.cm2.tasksPerIteration, demo.cm2.groupSize, demo.cm2.limits.maxUserTurns], [1, 4, 1]);
});
