/**
 * `cm2 doctor`: what stands between this machine and a working `task start`, each finding with its fix.
 *
 * Checks the CPU, whether the llama-server build passed its smoke test on this CPU, free memory against the
 * demo's need, free disk against `.cm2`'s size, the ports the stack uses, Temporal, each model role's
 * endpoint, and the Python venv. `task start` runs it when it fails. Runtime: Deno.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { RunConfig } from "../core/config.ts";
import { CM2_DIR, GGUF_PATH, PYTHON, ROOT, TEMPORAL_BIN } from "./paths.ts";
import { isBuilt, LLAMA_CHECK_FILE, LLAMA_SERVER_BIN } from "./llama_server_build.ts";
import { cpuInfo, readCheck, smokeTest } from "./llama_server_check.ts";
import { lastLines } from "./proc.ts";
import { duBytes } from "./setup.ts";
import { isListening } from "./temporal_server.ts";

/** One finding: `fail` stops `task start`, `warn` may, `ok` is information. */
export interface Finding {
  check: string;
  status: "ok" | "warn" | "fail";
  detail: string;
  fix?: string;
}

/** Peak memory of the demo stack as measured (README: 4.06 GiB PSS), with headroom. */
export const DEMO_MEMORY_BYTES = 5 * 2 ** 30;
/** What a fresh install writes under `.cm2` (venv with CUDA torch, model, llama.cpp build): ~7 GB. */
export const INSTALL_BYTES = 8e9;
/** Room the store, logs and Temporal's SQLite need to grow during runs. */
export const RUN_MARGIN_BYTES = 2e9;

const GiB = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;

/** The CPU finding: model, cores, and the SIMD features that decide which llama.cpp variant runs. */
export async function checkCpu(cpuinfoText?: string): Promise<Finding> {
  const cpu = await cpuInfo(cpuinfoText);
  const interesting = [
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
  ]
    .filter((f) => cpu.flags.includes(f));
  return {
    check: "cpu",
    status: "ok",
    detail: `${cpu.model} (${cpu.arch}, ${navigator.hardwareConcurrency} cores; ${
      interesting.length ? interesting.join(" ") : "no AVX"
    })`,
  };
}

/** Whether llama-server is built and passed its smoke test on this CPU. */
export async function checkLlama(): Promise<Finding> {
  const recheck = "deno run -A scripts/llama_server_build.ts --recheck";
  if (!(await isBuilt())) {
    return {
      check: "llama-server",
      status: "warn",
      detail: "not built (the slow prebuilt llama.node server would be used)",
      fix:
        "deno task setup (needs git and a C++ compiler, e.g. apt-get install git g++; cmake and ninja come as pinned wheels)",
    };
  }
  const [check, cpu] = await Promise.all([readCheck(LLAMA_CHECK_FILE), cpuInfo()]);
  if (!check) {
    return {
      check: "llama-server",
      status: "warn",
      detail: "built, not yet smoke-tested here",
      fix: "deno task setup",
    };
  }
  if (check.cpu.fingerprint !== cpu.fingerprint) {
    return {
      check: "llama-server",
      status: "warn",
      detail: `smoke-tested on another CPU (${check.cpu.model}); the launcher refuses to run here`,
      fix: "deno task setup (checks it again on this CPU)",
    };
  }
  if (!check.ok) {
    return {
      check: "llama-server",
      status: "warn",
      detail: `failed its smoke test here: ${check.reason}`,
      fix: `see ${LLAMA_CHECK_FILE}; retry with: ${recheck}`,
    };
  }
  const launcher = await fs.stat(LLAMA_SERVER_BIN).then(() => true, () => false);
  if (launcher) {
    // the stored check says it passed; prove the launcher still runs (about a second)
    const r = await smokeTest({ binary: LLAMA_SERVER_BIN, gguf: GGUF_PATH, nPredict: 2, timeoutMs: 60_000 });
    if (!r.ok) {
      return {
        check: "llama-server",
        status: "fail",
        detail: `passed its smoke test here on ${check.checkedAt}, but fails now: ${r.reason}\n${r.logTail}`,
        fix: recheck,
      };
    }
  }
  return {
    check: "llama-server",
    status: launcher ? "ok" : "warn",
    detail: `passed its smoke test here (CPU variant ${check.variant ?? "built-in"}${
      check.repack === false ? ", weight repacking off" : ""
    }${check.excluded.length ? `; crashed and left out: ${check.excluded.join(", ")}` : ""}; ${
      check.tokensPerSecond?.toFixed(0) ?? "?"
    } tokens/s decode)`,
    ...(launcher ? {} : { fix: recheck }),
  };
}

/** Available memory (`MemAvailable` of /proc/meminfo) against the demo's need. */
export async function checkMemory(meminfoText?: string, need = DEMO_MEMORY_BYTES): Promise<Finding> {
  const text = meminfoText ?? await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const kb = (k: string) => Number(text.match(new RegExp(`^${k}:\\s+(\\d+) kB`, "m"))?.[1] ?? NaN) * 1024;
  const avail = kb("MemAvailable");
  const total = kb("MemTotal");
  if (!Number.isFinite(avail)) {
    return { check: "memory", status: "warn", detail: "cannot read /proc/meminfo" };
  }
  const detail = `${GiB(avail)} available of ${GiB(total)}; the CPU demo peaks at ~4.1 GiB`;
  return avail >= need ? { check: "memory", status: "ok", detail } : {
    check: "memory",
    status: avail >= need * 0.7 ? "warn" : "fail",
    detail,
    fix: "stop other programs, or run a smaller config (cm2.groupSize, cm2.episodeConcurrency)",
  };
}

/** Bytes free on the file system holding `dir` (POSIX `df -Pk`). */
export async function freeBytes(dir: string): Promise<number> {
  const out = await new Deno.Command("df", { args: ["-Pk", dir], stdout: "piped", stderr: "null" }).output();
  const fields = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)?.split(/\s+/) ?? [];
  return Number(fields[3]) * 1024;
}

/** Free disk against what `.cm2` still needs: the install when it is not there yet, and room to run. */
export async function checkDisk(dir = CM2_DIR, free?: number, used?: number): Promise<Finding> {
  const probe = await fs.stat(dir).then(() => dir, () => path.dirname(dir));
  const f = free ?? await freeBytes(probe);
  const u = used ?? await duBytes(dir);
  const need = Math.max(0, INSTALL_BYTES - u) + RUN_MARGIN_BYTES;
  const detail = `${(f / 1e9).toFixed(1)} GB free; .cm2 holds ${(u / 1e9).toFixed(1)} GB, needs ~${
    (need / 1e9).toFixed(1)
  } GB more`;
  return f >= need ? { check: "disk", status: "ok", detail } : {
    check: "disk",
    status: "fail",
    detail,
    fix: "free disk space, or move the checkout to a larger disk (.cm2/ lives inside it)",
  };
}

/** Whether an OpenAI-compatible server answers at `baseURL` (`GET /models`). */
async function answersOpenAI(baseURL: string, apiKey?: string): Promise<string | undefined> {
  try {
    const res = await fetch(`${baseURL.replace(/\/$/, "")}/models`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(5_000),
    });
    await res.body?.cancel();
    return res.ok ? undefined : `HTTP ${res.status}`;
  } catch (err) {
    return (err as Error).message.split("\n")[0];
  }
}

/** Whether a Temporal frontend answers at `address` (a gRPC call, not only a TCP connect). */
export async function checkTemporal(address: string, timeoutMs = 5_000): Promise<Finding> {
  const [host, port] = [address.replace(/:\d+$/, ""), Number(address.match(/:(\d+)$/)?.[1] ?? 7233)];
  if (!(await isListening(host, port))) {
    return {
      check: "temporal",
      status: "warn",
      detail: `nothing listens on ${address}`,
      fix: "`task start` starts the embedded dev server; for a separate one: deno task dev",
    };
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const { NativeConnection } = await import("@temporalio/worker"); // only here: the rest stays pure
    const conn = await Promise.race([
      NativeConnection.connect({ address }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs / 1000} s`)), timeoutMs);
      }),
    ]);
    try {
      const info = await conn.workflowService.getSystemInfo({});
      return {
        check: "temporal",
        status: "ok",
        detail: `${address} answers (server ${info.serverVersion || "?"})`,
      };
    } finally {
      await conn.close();
    }
  } catch (err) {
    return {
      check: "temporal",
      status: "fail",
      detail: `${address} accepts connections but is not a Temporal frontend: ${
        (err as Error).message.split("\n")[0]
      }`,
      fix: `stop what holds port ${port} (\`ss -ltnp 'sport = :${port}'\`), or set TEMPORAL_ADDRESS`,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** The embedded stack's ports: in use by what cm2 expects, free, or taken by something else. */
export async function checkPorts(): Promise<Finding[]> {
  const ports: [number, string, string][] = [
    [8233, "Temporal Web UI", "http://127.0.0.1:8233/"],
    [8765, "policy server", "http://127.0.0.1:8765/health"],
    [8766, "judge/simulator server", "http://127.0.0.1:8766/health"],
  ];
  const out: Finding[] = [];
  for (const [port, what, url] of ports) {
    if (!(await isListening("127.0.0.1", port))) {
      out.push({ check: `port ${port}`, status: "ok", detail: `free (${what} starts there)` });
      continue;
    }
    const ok = await fetch(url, { signal: AbortSignal.timeout(3_000) })
      .then(async (r) => (await r.body?.cancel(), r.ok)).catch(() => false);
    out.push(
      ok ? { check: `port ${port}`, status: "ok", detail: `in use by a running ${what} (reused)` } : {
        check: `port ${port}`,
        status: "fail",
        detail: `in use by something that is not a healthy ${what}`,
        fix: `stop it (\`ss -ltnp 'sport = :${port}'\` shows which process)`,
      },
    );
  }
  return out;
}

/** Each model role's endpoint: the embedded ones may be down (task start starts them); others must answer. */
export async function checkRoles(config: RunConfig): Promise<Finding[]> {
  const out: Finding[] = [];
  for (const [role, r] of Object.entries(config.models)) {
    const u = new URL(r.baseURL);
    const embedded = u.hostname === "127.0.0.1" && (u.port === "8765" || u.port === "8766");
    const key = r.apiKeyEnv ? Deno.env.get(r.apiKeyEnv) : undefined;
    if (r.apiKeyEnv && !key) {
      out.push({
        check: `model ${role}`,
        status: "fail",
        detail: `${r.apiKeyEnv} is not set`,
        fix: `export ${r.apiKeyEnv}=… (keys come from the environment only)`,
      });
      continue;
    }
    const where = `${u.origin}${u.pathname}`;
    const err = await answersOpenAI(r.baseURL, key);
    if (!err) out.push({ check: `model ${role}`, status: "ok", detail: `${where} answers (${r.model})` });
    else if (embedded) {
      out.push({ check: `model ${role}`, status: "ok", detail: `${where} is down (task start starts it)` });
    } else {
      out.push({
        check: `model ${role}`,
        status: "fail",
        detail: `${where} does not answer: ${err}`,
        fix: `check models.${role}.baseURL and the server behind it`,
      });
    }
  }
  return out;
}

/** Whether the project venv imports the trainer and its pinned dependencies. */
export async function checkVenv(python = PYTHON): Promise<Finding> {
  const fix = "deno task setup (or, if it is broken: rm -rf .cm2/venv && deno task setup)";
  if (!(await fs.stat(python).then(() => true, () => false))) {
    return { check: "python venv", status: "warn", detail: `${python} not found (not installed yet)`, fix };
  }
  const code = "import torch, transformers, peft, temporalio, cm2_trainer.worker, cm2_trainer.serve; " +
    "print(f'torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')";
  const out = await new Deno.Command(python, {
    args: ["-c", code],
    env: { PYTHONPATH: path.join(ROOT, "trainer") },
    stdout: "piped",
    stderr: "piped",
  }).output().catch((err: Error) => ({
    success: false,
    stdout: new Uint8Array(),
    stderr: new TextEncoder().encode(err.message),
  }));
  const dec = new TextDecoder();
  return out.success ? { check: "python venv", status: "ok", detail: dec.decode(out.stdout).trim() } : {
    check: "python venv",
    status: "fail",
    detail: `imports fail:\n${lastLines(dec.decode(out.stderr), 4, "    ")}`,
    fix,
  };
}

/** The installed files `task start` needs (model, Temporal CLI). */
export async function checkInstall(): Promise<Finding> {
  const missing: string[] = [];
  for (const p of [GGUF_PATH, TEMPORAL_BIN]) {
    if (!(await fs.stat(p).then(() => true, () => false))) missing.push(path.relative(ROOT, p));
  }
  return missing.length
    ? { check: "install", status: "warn", detail: `missing: ${missing.join(", ")}`, fix: "deno task setup" }
    : { check: "install", status: "ok", detail: "embedded model and Temporal CLI present" };
}

/** Every check, in the order a user would fix them. */
export async function runDoctor(opts: { config: RunConfig; temporalAddress: string }): Promise<Finding[]> {
  return [
    await checkCpu(),
    await checkInstall(),
    await checkLlama(),
    await checkVenv(),
    await checkMemory(),
    await checkDisk(),
    await checkTemporal(opts.temporalAddress),
    ...await checkPorts(),
    ...await checkRoles(opts.config),
  ];
}

/** Prints findings, one line each with its fix under it. */
export function formatFindings(findings: Finding[], onlyProblems = false): string {
  const mark = { ok: "ok  ", warn: "WARN", fail: "FAIL" } as const;
  return findings.filter((f) => !onlyProblems || f.status !== "ok").map((f) =>
    `${mark[f.status]} ${f.check}: ${f.detail}${f.fix ? `\n     fix: ${f.fix}` : ""}`
  ).join("\n");
}
