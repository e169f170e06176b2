/**
 * The llama-server that `task start` runs: built portable, smoke-tested on this CPU, with a fallback when a
 * configuration dies. Three layers:
 *
 * 1. the real build, as `task start` gets it (`ensureLlamaServer`), completes tokens through the launcher;
 * 2. the real build on a machine that advertises AMX but cannot run it (`tests/doubles/amx_unusable.c`, a
 *    seccomp filter that fakes the kernel's AMX permission): the check falls back and passes;
 * 3. the fallback order and the stored check, on a fake build whose variants crash on demand
 *    (`tests/doubles/fake_llama_server.sh`), so every branch runs on any machine.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { GGUF_PATH, ROOT } from "../../scripts/paths.ts";
import {
  ensureChecked,
  ensureLlamaServer,
  LLAMA_BUILD_BIN,
  LLAMA_CHECK_FILE,
} from "../../scripts/llama_server_build.ts";
import {
  checkBuild,
  cpuInfo,
  readCheck,
  smokeTest,
  writeLauncher,
} from "../../scripts/llama_server_check.ts";

const DOUBLES = path.join(ROOT, "tests", "doubles");
const opts = { sanitizeOps: false, sanitizeResources: false };

async function tmp(prefix: string): Promise<string> {
  return await fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

Deno.test({
  name: "task start's llama-server is built, passes its smoke test on this CPU and completes tokens",
  ...opts,
  fn: async () => {
    const lines: string[] = [];
    const launcher = await ensureLlamaServer((s) => lines.push(s));
    assert.ok(launcher, `no llama-server for task start:\n${lines.join("\n")}`);
    const check = await readCheck(LLAMA_CHECK_FILE);
    assert.ok(check?.ok, "check.json says it passed");
    assert.equal(check.cpu.fingerprint, (await cpuInfo()).fingerprint, "checked on this very CPU");
    const r = await smokeTest({ binary: launcher, gguf: GGUF_PATH, nPredict: 4 });
    assert.ok(r.ok, `${r.reason}\n${r.logTail}`);
    assert.ok(r.tokensPerSecond! > 0);
  },
});

Deno.test({
  name:
    "on a CPU that advertises AMX but cannot run it, the real build falls back and still completes tokens",
  ...opts,
  fn: async () => {
    const dir = await tmp("cm2-amx-");
    const double = path.join(dir, "amx_unusable");
    const cc = await new Deno.Command("cc", {
      args: ["-O2", "-o", double, path.join(DOUBLES, "amx_unusable.c")],
      stderr: "piped",
    }).output();
    assert.ok(cc.success, new TextDecoder().decode(cc.stderr));
    const log: string[] = [];
    const check = await checkBuild({
      buildBin: LLAMA_BUILD_BIN,
      runDir: path.join(dir, "run"),
      gguf: GGUF_PATH,
      prefix: [double],
      log: (s) => log.push(s),
    });
    assert.ok(check.ok, `no configuration passed under the double:\n${log.join("\n")}`);
    const cpu = await cpuInfo();
    if (cpu.flags.includes("amx_int8")) {
      // ggml picks its AMX variant here, whose repacked weights hit the tile instructions: that must die of
      // SIGILL, and the check must find the configuration that does not
      assert.equal(check.attempts[0]!.ok, false);
      assert.match(check.attempts[0]!.outcome, /SIGILL: illegal instruction/);
      assert.equal(check.attempts.at(-1)!.ok, true);
      assert.ok(check.repack === false || check.excluded.length > 0, JSON.stringify(check.attempts));
    } else {
      console.log(`(this CPU does not advertise AMX: ${cpu.model}; the double changes nothing)`);
    }
    // the launcher written from that check runs under the double too
    const launcher = path.join(dir, "llama-server");
    await writeLauncher(launcher, path.join(dir, "run"), check);
    const r = await smokeTest({ binary: launcher, gguf: GGUF_PATH, prefix: [double], nPredict: 4 });
    assert.ok(r.ok, `${r.reason}\n${r.logTail}`);
    await fs.rm(dir, { recursive: true, force: true });
  },
});

/** A fake build directory: the double as `llama-server` and empty variant libraries. */
async function fakeBuild(variants = ["sapphirerapids", "icelake", "haswell", "x64"]): Promise<string> {
  const dir = await tmp("cm2-fake-llama-");
  const bin = path.join(dir, "build");
  await fs.mkdir(bin);
  await fs.copyFile(path.join(DOUBLES, "fake_llama_server.sh"), path.join(bin, "llama-server"));
  await fs.chmod(path.join(bin, "llama-server"), 0o755);
  for (const v of variants) await fs.writeFile(path.join(bin, `libggml-cpu-${v}.so`), v);
  Deno.env.set("FAKE_LLAMA_DENO", Deno.execPath());
  Deno.env.set("FAKE_LLAMA_SERVER_TS", path.join(DOUBLES, "fake_llama_server.ts"));
  return dir;
}

async function fakeCheck(crash: string, gguf = GGUF_PATH) {
  const dir = await fakeBuild();
  Deno.env.set("FAKE_LLAMA_CRASH", crash);
  try {
    return await checkBuild({ buildBin: path.join(dir, "build"), runDir: path.join(dir, "run"), gguf });
  } finally {
    Deno.env.delete("FAKE_LLAMA_CRASH");
  }
}

Deno.test({
  name: "check fallback: a variant that dies with repacking runs with --no-repack",
  ...opts,
  fn: async () => {
    const c = await fakeCheck("sapphirerapids+repack");
    assert.ok(c.ok);
    assert.deepEqual(c.attempts.map((a) => [a.variant, a.repack, a.ok]), [
      ["sapphirerapids", true, false],
      ["sapphirerapids", false, true],
    ]);
    assert.match(c.attempts[0]!.outcome, /^llama-server died: SIGILL: illegal instruction/);
    assert.equal(c.variant, "sapphirerapids");
    assert.equal(c.repack, false);
    assert.deepEqual(c.excluded, []);
  },
});

Deno.test({
  name: "check fallback: variants that die either way are left out, down to one that runs",
  ...opts,
  fn: async () => {
    const c = await fakeCheck("sapphirerapids icelake");
    assert.ok(c.ok);
    assert.deepEqual(c.attempts.map((a) => [a.variant, a.repack, a.ok]), [
      ["sapphirerapids", true, false],
      ["sapphirerapids", false, false],
      ["icelake", true, false],
      ["icelake", false, false],
      ["haswell", true, true],
    ]);
    assert.deepEqual(c.excluded, ["sapphirerapids", "icelake"]);
    assert.equal(c.variant, "haswell");
    assert.equal(c.repack, true);
  },
});

Deno.test({
  name:
    "check fallback: when every variant dies the check fails with the reason; other failures do not fall back",
  ...opts,
  fn: async () => {
    const all = await fakeCheck("sapphirerapids icelake haswell x64");
    assert.equal(all.ok, false);
    assert.equal(all.attempts.length, 8);
    assert.match(all.reason!, /every CPU variant of the build crashed on this machine/);
    const missing = await fakeCheck("", "/nonexistent/model.gguf");
    assert.equal(missing.ok, false);
    assert.equal(missing.attempts.length, 1, "a missing model is not the CPU's fault: no fallback");
    assert.match(missing.reason!, /exit code 1/);
  },
});

Deno.test({
  name:
    "the stored check is reused on the same CPU and build, redone on another CPU, and the launcher refuses it",
  ...opts,
  fn: async () => {
    const dir = await fakeBuild();
    const p = {
      buildBin: path.join(dir, "build"),
      runDir: path.join(dir, "run"),
      checkFile: path.join(dir, "check.json"),
      launcher: path.join(dir, "llama-server"),
      gguf: GGUF_PATH,
    };
    const logs: string[] = [];
    const first = await ensureChecked(p, (s) => logs.push(s));
    assert.ok(first.ok);
    const again = await ensureChecked(p, (s) => logs.push(s));
    assert.equal(again.checkedAt, first.checkedAt, "same CPU, same build: the stored check is used");
    // the build as copied from another machine: the stamp names another CPU
    await fs.writeFile(
      p.checkFile,
      JSON.stringify({ ...first, cpu: { ...first.cpu, fingerprint: "0".repeat(16) } }),
    );
    logs.length = 0;
    const redone = await ensureChecked(p, (s) => logs.push(s));
    assert.ok(redone.ok && redone.checkedAt !== first.checkedAt);
    assert.match(logs.join("\n"), /checked on another CPU/);
    // a changed build is checked again too
    await fs.writeFile(path.join(p.buildBin, "libggml-cpu-x64.so"), "rebuilt");
    const rebuilt = await ensureChecked(p, () => {});
    assert.notEqual(rebuilt.build, first.build);
    // the launcher of a copied build refuses to run on a CPU it was not checked on
    const text = await fs.readFile(p.launcher, "utf8");
    const forged = text.replace(/!= '[^']*'/, "!= '12345 67'");
    assert.notEqual(forged, text);
    await fs.writeFile(p.launcher, forged);
    const out = await new Deno.Command(p.launcher, { args: ["--version"], stderr: "piped" }).output();
    assert.equal(out.code, 3);
    assert.match(new TextDecoder().decode(out.stderr), /checked on another CPU; run 'deno task setup'/);
    await fs.rm(dir, { recursive: true, force: true });
  },
});
