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
