import assert from "node:assert/strict";
import { checkCpu, checkDisk, checkMemory, DEMO_MEMORY_BYTES, formatFindings } from "../../scripts/doctor.ts";
import { cpuInfo } from "../../scripts/llama_server_check.ts";
import { describeExit, exitSignal, lastLines } from "../../scripts/proc.ts";
import { mmss, progressOf } from "../../scripts/llama_server_build.ts";

const meminfo = (availKb: number) =>
  `MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   ${availKb} kB\n`;

Deno.test("doctor: memory below the demo's need fails with a fix, enough passes", async () => {
  const low = await checkMemory(meminfo(2 * 1024 * 1024));
  assert.equal(low.status, "fail");
  assert.match(low.detail, /2\.0 GiB available/);
  assert.ok(low.fix);
  const near = await checkMemory(meminfo(Math.round((0.8 * DEMO_MEMORY_BYTES) / 1024)));
  assert.equal(near.status, "warn");
  assert.equal((await checkMemory(meminfo(20 * 1024 * 1024))).status, "ok");
  assert.equal((await checkMemory("garbage")).status, "warn");
});

Deno.test("doctor: disk needs the rest of the install plus room to run", async () => {
  const fresh = await checkDisk("/nonexistent/.cm2", 5e9, 0); // nothing installed: ~8 GB + 2 GB needed
  assert.equal(fresh.status, "fail");
  assert.match(fresh.detail, /needs ~10\.0 GB more/);
  assert.equal((await checkDisk("/nonexistent/.cm2", 5e9, 8e9)).status, "ok"); // installed: 2 GB margin
});

Deno.test("doctor: the CPU finding names the features that pick the llama.cpp variant", async () => {
  const text = "model name\t: Example Xeon\nflags\t\t: fpu sse2 avx avx2 fma avx512f amx_tile amx_int8\n";
  const f = await checkCpu(text);
  assert.match(f.detail, /^Example Xeon/);
  assert.match(f.detail, /avx2 fma avx512f amx_tile amx_int8/);
  const a = await cpuInfo(text);
  const b = await cpuInfo(text.replace("amx_int8", ""));
  assert.notEqual(a.fingerprint, b.fingerprint, "a CPU with other flags is another CPU for the stamp");
});

Deno.test("doctor: findings print with their fixes; only problems when asked", () => {
  const text = formatFindings([
    { check: "a", status: "ok", detail: "fine" },
    { check: "b", status: "fail", detail: "broken", fix: "do this" },
  ], true);
  assert.equal(text, "FAIL b: broken\n     fix: do this");
});

Deno.test("a child's death is described by its signal's name and meaning", () => {
  assert.equal(exitSignal({ code: 132, signal: "SIGILL" }), "SIGILL");
  assert.equal(exitSignal({ code: 137, signal: null }), "SIGKILL"); // through a shell: 128 + 9
  assert.match(describeExit({ code: 132, signal: "SIGILL" }), /^SIGILL: illegal instruction/);
  assert.match(describeExit({ code: 137 }), /^SIGKILL: killed: out of memory\?/);
  assert.equal(describeExit({ code: 1, signal: null }), "exit code 1");
  assert.equal(lastLines("a\n\nb\nc\n", 2, "> "), "> b\n> c");
});

Deno.test("build progress is read from ninja's and make's lines", () => {
  assert.deepEqual(progressOf("[12/444] Building CXX object x.o"), { done: 12, total: 444 });
  assert.deepEqual(progressOf("[ 45%] Building CXX object x.o"), { done: 45, total: 100 });
  assert.equal(progressOf("warning: x"), undefined);
  assert.equal(mmss(599.6), "10m00s"); // not 9m60s
  assert.equal(mmss(65), "1m05s");
  assert.equal(mmss(42.2), "42s");
});
