/**
 * Proves that the built `llama-server` runs on *this* machine before cm2 uses it, and remembers the proof.
 *
 * A CPU may advertise what it cannot run (a cloud VM whose Xeon lists AMX kills the process with SIGILL at its
 * first tile instruction), and a built binary may be copied to another machine. So the build is never trusted
 * on the CPU flags alone: the smoke test loads the embedded model and completes a few tokens. The build
 * carries every CPU variant of ggml's CPU backend (`GGML_CPU_ALL_VARIANTS`, loaded at run time by score), and
 * when a run dies of a signal the check falls back, in order:
 *
 * 1. the best variant for this CPU, as ggml picks it;
 * 2. the same variant with weight repacking off (`--no-repack`: keeps weights out of the AMX and other
 *    repacked buffer types, the path that died on the VM);
 * 3. the next variant down (the one that died is left out of the run directory), again with and without
 *    repacking, down to the plain x86-64 baseline.
 *
 * The outcome is stored in `.cm2/llama.cpp/check.json` with the CPU's fingerprint and the build's hash, and
 * a launcher script (`.cm2/llama.cpp/llama-server`) runs the binary with what passed. Every start compares the
 * stamp with the current CPU and build, so a copied build is checked again; the launcher itself refuses to
 * run on a CPU it was not checked on. Runtime: Deno.
 *
 * @module
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describeExit, exitSignal, lastLines } from "./proc.ts";
import { freePort } from "./temporal_server.ts";

/** This machine's CPU as the check sees it. */
export interface CpuInfo {
  arch: string;
  model: string;
  /** Instruction-set flags of the first CPU (`flags` on x86, `Features` on Arm). */
  flags: string[];
  /** A short hash of architecture, model and flags: a stamp made on another CPU does not match. */
  fingerprint: string;
}

/** One smoke-test run. */
export interface SmokeResult {
  ok: boolean;
  /** Why it failed, in words (with the exit signal's meaning when it died). */
  reason?: string;
  /** The signal that killed it, if one did. */
  signal?: string;
  /** The ggml CPU variant that was loaded (`icelake`, `sapphirerapids`, …), when the build has variants. */
  variant?: string;
  /** Decode speed of the completion, tokens/s (llama-server's own timing). */
  tokensPerSecond?: number;
  /** Prompt-processing speed, tokens/s. */
  promptTokensPerSecond?: number;
  seconds: number;
  /** The last lines of the server's output. */
  logTail: string;
}

/** One configuration tried by {@linkcode checkBuild}. */
export interface CheckAttempt {
  variant: string | undefined;
  repack: boolean;
  ok: boolean;
  outcome: string;
  seconds: number;
}

/** The stored result of a check (`check.json`). */
export interface LlamaCheck {
  schema: "cm2.llama-check/v1";
  ok: boolean;
  cpu: { arch: string; model: string; fingerprint: string };
  /** Hash of the build's binary and libraries: a rebuilt or replaced build is checked again. */
  build: string;
  /** The variant that passed, and whether repacking stays on. */
  variant?: string;
  repack?: boolean;
  /** Variants that crashed here and are left out of the run directory. */
  excluded: string[];
  attempts: CheckAttempt[];
  tokensPerSecond?: number;
  promptTokensPerSecond?: number;
  reason?: string;
  checkedAt: string;
}

/** Reads this machine's CPU model and flags (Linux `/proc/cpuinfo`; elsewhere only the architecture). */
export async function cpuInfo(cpuinfoText?: string): Promise<CpuInfo> {
  const text = cpuinfoText ?? await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const model = text.match(/^model name\s*:\s*(.*)$/m)?.[1]?.trim() ??
    text.match(/^(?:Hardware|CPU part)\s*:\s*(.*)$/m)?.[1]?.trim() ?? "unknown";
  const flags = (text.match(/^(?:flags|Features)\s*:\s*(.*)$/m)?.[1] ?? "").split(/\s+/).filter(Boolean);
  const fingerprint = createHash("sha256").update(`${Deno.build.arch}\n${model}\n${flags.join(" ")}`)
    .digest("hex").slice(0, 16);
  return { arch: Deno.build.arch, model, flags, fingerprint };
}

/** The ggml CPU variant a library file is (`libggml-cpu-haswell.so` → `haswell`). */
export function variantOf(file: string): string | undefined {
  return path.basename(file).match(/^libggml-cpu-(.+?)\.(?:so|dylib|dll)$/)?.[1];
}

/** A hash over the build's program and libraries (names and contents). */
export async function buildId(buildBin: string): Promise<string> {
  const h = createHash("sha256");
  const names = (await fs.readdir(buildBin)).filter((n) =>
    n === "llama-server" || /\.(so|dylib)(\.|$)/.test(n)
  )
    .sort();
  for (const n of names) {
    const st = await fs.lstat(path.join(buildBin, n));
    if (!st.isFile()) continue;
    h.update(n).update("\0").update(await fs.readFile(path.join(buildBin, n)));
  }
  return h.digest("hex").slice(0, 16);
}

/**
 * Makes `runDir` hold the program and the CPU variant libraries minus `exclude` (hard links; copies across
 * file systems). ggml looks for its CPU variants beside the running executable, so leaving a variant out of
 * this directory is how a lower one is chosen; the build directory itself is never changed.
 */
export async function assembleRunDir(
  buildBin: string,
  runDir: string,
  exclude: readonly string[],
): Promise<void> {
  await fs.rm(runDir, { recursive: true, force: true });
  await fs.mkdir(runDir, { recursive: true });
  for (const e of await fs.readdir(buildBin, { withFileTypes: true })) {
    const v = variantOf(e.name);
    if (e.name !== "llama-server" && v === undefined) continue; // other libraries load by their RUNPATH
    if (v !== undefined && exclude.includes(v)) continue;
    const src = path.join(buildBin, e.name);
    const dst = path.join(runDir, e.name);
    if (e.isSymbolicLink()) {
      await fs.symlink(await fs.readlink(src), dst);
      continue;
    }
    await fs.link(src, dst).catch(() => fs.copyFile(src, dst));
  }
}

/** The smoke test's prompt: a short paragraph, so both the batched prompt pass and decoding run. */
export const SMOKE_PROMPT =
  "Here is a short report about the weather in three cities. In Paris it is sunny and " +
  "warm, with a light wind from the south. In Oslo it is cold and it has been snowing since the morning. In " +
  "Lisbon the sky is clear and the sea is calm. Write one more sentence about Rome:";

/**
 * Starts `binary` on the model, waits for it to answer `/health`, completes `nPredict` tokens of a short
 * prompt (so both the batched prompt pass and single-token decode run), and stops it. A process that dies on
 * the way is reported with its signal by name and the last lines of its output.
 */
export async function smokeTest(opts: {
  binary: string;
  gguf: string;
  args?: string[];
  /** Runs the binary through another program (`prefix[0] … binary args`), e.g. a test double. */
  prefix?: string[];
  threads?: number;
  nPredict?: number;
  /** Prompt text (default: a short paragraph); a benchmark passes a longer one. */
  prompt?: string;
  /** Context size (default 1024). */
  ctx?: number;
  timeoutMs?: number;
}): Promise<SmokeResult> {
  const t0 = performance.now();
  const port = await freePort();
  const argv = [
    ...(opts.prefix ?? []),
    opts.binary,
    "-m",
    opts.gguf,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "-c",
    String(opts.ctx ?? 1024),
    "-np",
    "1",
    "-t",
    String(opts.threads ?? Math.min(2, navigator.hardwareConcurrency || 2)),
    "--no-webui",
    ...(opts.args ?? []),
  ];
  let out = "";
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
  } catch (err) {
    return {
      ok: false,
      reason: `cannot start ${argv[0]}: ${(err as Error).message}`,
      seconds: 0,
      logTail: "",
    };
  }
  const dec = new TextDecoder();
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) out = (out + dec.decode(chunk, { stream: true })).slice(-200_000);
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]).catch(() => {});
  let status: Deno.CommandStatus | undefined;
  const exited = child.status.then((s) => (status = s));
  const seconds = () => (performance.now() - t0) / 1000;
  // Which CPU variant ggml loaded: llama-server does not log it by default, so it is read from the process's
  // memory map (Linux) while it runs, or from a "loaded CPU backend from …" log line. ggml opens every variant
  // to ask its score and keeps only the best mapped: the last one seen is the one that ran.
  let mapped: string | undefined;
  const pollMaps = setInterval(async () => {
    if (status) return clearInterval(pollMaps);
    const maps = await Deno.readTextFile(`/proc/${child.pid}/maps`).catch(() => "");
    const found = [...new Set(maps.match(/\S*libggml-cpu-[^/\s]+\.so/g) ?? [])];
    if (found.length === 1) mapped = found[0];
  }, 10);
  const variant = () => mapped ?? out.match(/loaded CPU backend from (\S+)/)?.[1];
  const died = async (): Promise<SmokeResult> => {
    await drained;
    const s = status!;
    const signal = exitSignal(s);
    return {
      ok: false,
      reason: `llama-server died: ${describeExit(s)}`,
      ...(signal ? { signal } : {}),
      ...(variantOf(variant() ?? "") ? { variant: variantOf(variant()!)! } : {}),
      seconds: seconds(),
      logTail: lastLines(out, 12),
    };
  };
  const stop = async () => {
    if (!status) {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const t = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 10_000);
      await exited;
      clearTimeout(t);
    }
    await drained;
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 90_000);
  const base = `http://127.0.0.1:${port}`;
  try {
    for (;;) {
      if (status) return await died();
      if (Date.now() > deadline) {
        await stop();
        return {
          ok: false,
          reason: `llama-server did not answer /health within ${(opts.timeoutMs ?? 90_000) / 1000} s`,
          seconds: seconds(),
          logTail: lastLines(out, 12),
        };
      }
      const up = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2_000) })
        .then(async (r) => (await r.body?.cancel(), r.ok)).catch(() => false);
      if (up) break;
      await Promise.race([exited, new Promise((r) => setTimeout(r, 200))]);
    }
    let body: {
      content?: unknown;
      tokens_predicted?: number;
      timings?: { predicted_per_second?: number; prompt_per_second?: number };
    };
    try {
      const res = await fetch(`${base}/completion`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: opts.prompt ?? SMOKE_PROMPT,
          n_predict: opts.nPredict ?? 8,
          temperature: 0,
          cache_prompt: false,
        }),
        signal: AbortSignal.timeout(Math.max(5_000, deadline - Date.now())),
      });
      body = await res.json();
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
    } catch (err) {
      await Promise.race([exited, new Promise((r) => setTimeout(r, 1_000))]);
      if (status) return await died();
      await stop();
      return {
        ok: false,
        reason: `completion failed: ${(err as Error).message}`,
        seconds: seconds(),
        logTail: lastLines(out, 12),
      };
    }
    if (typeof body.content !== "string" || !(Number(body.tokens_predicted) >= 1)) {
      await stop();
      return {
        ok: false,
        reason: `completion returned no tokens: ${JSON.stringify(body).slice(0, 300)}`,
        seconds: seconds(),
        logTail: lastLines(out, 12),
      };
    }
    await stop();
    const v = variantOf(variant() ?? "");
    return {
      ok: true,
      ...(v ? { variant: v } : {}),
      ...(body.timings?.predicted_per_second ? { tokensPerSecond: body.timings.predicted_per_second } : {}),
      ...(body.timings?.prompt_per_second ? { promptTokensPerSecond: body.timings.prompt_per_second } : {}),
      seconds: seconds(),
      logTail: lastLines(out, 12),
    };
  } finally {
    clearInterval(pollMaps);
    if (!status) await stop();
  }
}

/**
 * Finds a configuration of the build in `buildBin` that completes tokens here (the order is in the module
 * doc). Only deaths by signal make it fall back: any other failure (a missing model, a port in use) is not
 * the CPU's and is returned at once.
 */
export async function checkBuild(opts: {
  buildBin: string;
  runDir: string;
  gguf: string;
  prefix?: string[];
  threads?: number;
  log?: (s: string) => void;
}): Promise<LlamaCheck> {
  const cpu = await cpuInfo();
  const build = await buildId(opts.buildBin);
  const attempts: CheckAttempt[] = [];
  const excluded: string[] = [];
  const result = (ok: boolean, extra: Partial<LlamaCheck>): LlamaCheck => ({
    schema: "cm2.llama-check/v1",
    ok,
    cpu: { arch: cpu.arch, model: cpu.model, fingerprint: cpu.fingerprint },
    build,
    excluded: [...excluded],
    attempts,
    checkedAt: new Date().toISOString(),
    ...extra,
  });
  const variants = (await fs.readdir(opts.buildBin)).map(variantOf).filter((v) => v !== undefined);
  let crashed: SmokeResult | undefined;
  for (;;) {
    if (variants.length > 0 && variants.every((v) => excluded.includes(v))) {
      return result(false, {
        reason: `every CPU variant of the build crashed on this machine (last: ${crashed?.reason ?? "?"})`,
      });
    }
    await assembleRunDir(opts.buildBin, opts.runDir, excluded);
    for (const repack of [true, false]) {
      const r = await smokeTest({
        binary: path.join(opts.runDir, "llama-server"),
        gguf: opts.gguf,
        args: repack ? [] : ["--no-repack"],
        ...(opts.prefix ? { prefix: opts.prefix } : {}),
        ...(opts.threads ? { threads: opts.threads } : {}),
      });
      const label = `${r.variant ?? "built-in CPU backend"}${repack ? "" : ", --no-repack"}`;
      attempts.push({
        variant: r.variant,
        repack,
        ok: r.ok,
        outcome: r.ok ? `ok, ${r.tokensPerSecond?.toFixed(1) ?? "?"} tokens/s` : r.reason ?? "failed",
        seconds: Number(r.seconds.toFixed(1)),
      });
      if (r.ok) {
        opts.log?.(`llama-server passed its smoke test (${label}: ${attempts.at(-1)!.outcome})`);
        return result(true, {
          ...(r.variant ? { variant: r.variant } : {}),
          repack,
          ...(r.tokensPerSecond ? { tokensPerSecond: Number(r.tokensPerSecond.toFixed(2)) } : {}),
          ...(r.promptTokensPerSecond
            ? { promptTokensPerSecond: Number(r.promptTokensPerSecond.toFixed(2)) }
            : {}),
        });
      }
      opts.log?.(`llama-server smoke test failed (${label}): ${r.reason}\n${r.logTail}`);
      if (!r.signal) return result(false, { reason: r.reason ?? "smoke test failed" });
      crashed = r;
    }
    const v = crashed?.variant;
    if (!v || excluded.includes(v)) { // no loadable variants, or none named: nothing lower to try
      return result(false, {
        reason: `${
          variants.length ? "it crashed, and which CPU variant ran could not be told" : "the build crashed"
        } (last: ${crashed?.reason ?? "?"}); nothing lower to try`,
      });
    }
    excluded.push(v);
    opts.log?.(`leaving out the ${v} CPU variant; trying the next one down`);
  }
}

/** The shell line that fingerprints the CPU inside the launcher (its output is compared verbatim). */
const SHELL_CPU_FINGERPRINT = "grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cksum";

function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Writes the launcher: checks the CPU, then runs the checked binary with what passed. */
export async function writeLauncher(launcher: string, runDir: string, check: LlamaCheck): Promise<void> {
  const fp = await new Deno.Command("sh", { args: ["-c", SHELL_CPU_FINGERPRINT], stdout: "piped" }).output();
  const expected = new TextDecoder().decode(fp.stdout).trim();
  const extra = check.repack === false ? " --no-repack" : "";
  const text = `#!/bin/sh
# cm2's llama-server launcher, written after a smoke test on this machine (${check.checkedAt}):
# ${check.cpu.model}; CPU variant ${check.variant ?? "built-in"}${
    check.repack === false ? "; weight repacking off" : ""
  }${check.excluded.length ? `; left out: ${check.excluded.join(", ")}` : ""}. See ${
    path.join(path.dirname(launcher), "check.json")
  }.
if [ "$(${SHELL_CPU_FINGERPRINT})" != ${shQuote(expected)} ]; then
  echo "cm2: this llama-server was checked on another CPU; run 'deno task setup' here to check it again" >&2
  exit 3
fi
exec ${shQuote(path.join(runDir, "llama-server"))}${extra} "$@"
`;
  await writeAtomic(launcher, text, 0o755);
}

/** Writes a file whole or not at all (a temporary file renamed over it). */
async function writeAtomic(file: string, text: string, mode = 0o644): Promise<void> {
  const tmp = `${file}.tmp-${Deno.pid}`;
  await fs.writeFile(tmp, text, { mode });
  await fs.rename(tmp, file);
}

/** Reads a stored check; undefined when there is none or it is unreadable. */
export async function readCheck(file: string): Promise<LlamaCheck | undefined> {
  try {
    const v = JSON.parse(await fs.readFile(file, "utf8"));
    return v?.schema === "cm2.llama-check/v1" ? v as LlamaCheck : undefined;
  } catch {
    return undefined;
  }
}

/** Writes a check atomically. */
export async function writeCheck(file: string, check: LlamaCheck): Promise<void> {
  await writeAtomic(file, JSON.stringify(check, null, 2) + "\n");
}
