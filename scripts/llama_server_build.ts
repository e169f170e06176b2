/**
 * Builds llama.cpp's `llama-server` for the embedded judge / simulator / labeler and policy engine, once,
 * under `.cm2/llama.cpp/`, and hands out only a build that has passed its smoke test on this machine.
 *
 * The source is the llama.cpp release that the npm package `node-llama-cpp` (pinned) ships as a git bundle,
 * so nothing comes from outside the package registries. The build is **portable**: no `-march=native`;
 * ggml's CPU backend is built in every x86 (or Arm) variant as a loadable library and the best one for the
 * running CPU is picked at run time (`GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`). The binary therefore runs
 * wherever it is copied, and `llama_server_check.ts` proves it with a smoke test on each new CPU, falling
 * back to weight repacking off and then to lower variants when a run dies (docs/decisions.md has the
 * measurements). The build prints its progress (ninja's `[done/total]`, or make's percentage) with an
 * estimate of the time left.
 *
 * It needs git, cmake and a C++ compiler; without them, or when no variant passes, `task start` falls back
 * to the prebuilt `@fugood/llama.node` server (`serve/llama_server.ts`) and says why. Runtime: Deno.
 *
 * @module
 */
import cliProgress from "cli-progress";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { CM2_DIR, GGUF_PATH, VENV } from "./paths.ts";
import {
  buildId,
  checkBuild,
  cpuInfo,
  type LlamaCheck,
  readCheck,
  writeCheck,
  writeLauncher,
} from "./llama_server_check.ts";
import { tailFile } from "./proc.ts";

/** The npm package (and version) whose tarball carries the llama.cpp source bundle. */
export const LLAMA_SOURCE_PACKAGE = "node-llama-cpp@3.22.1";
export const LLAMA_DIR = path.join(CM2_DIR, "llama.cpp");
/** Where the build puts the program and its libraries (never run directly: see {@linkcode LLAMA_SERVER_BIN}). */
export const LLAMA_BUILD_BIN = path.join(LLAMA_DIR, "build", "bin");
/** The program with the CPU variants that passed here (hard links into the build). */
export const LLAMA_RUN_DIR = path.join(LLAMA_DIR, "run");
/** The checked launcher: the only path cm2 runs llama-server through. Exists only after a passed check. */
export const LLAMA_SERVER_BIN = path.join(LLAMA_DIR, "llama-server");
/** The smoke test's result on this machine. */
export const LLAMA_CHECK_FILE = path.join(LLAMA_DIR, "check.json");
/** The configuration the build was made with; a different one is rebuilt. */
const BUILD_INFO = path.join(LLAMA_DIR, "build.json");
const BUILD_LOG = path.join(CM2_DIR, "logs", "llama-build.log");

/** The portable build: every CPU variant as a library picked at run time, nothing tuned to this CPU. */
export const CMAKE_ARGS = [
  "-DCMAKE_BUILD_TYPE=Release",
  "-DGGML_NATIVE=OFF",
  "-DGGML_BACKEND_DL=ON",
  "-DGGML_CPU_ALL_VARIANTS=ON",
  "-DBUILD_SHARED_LIBS=ON",
  "-DLLAMA_CURL=OFF",
  "-DLLAMA_BUILD_TESTS=OFF",
  "-DLLAMA_BUILD_EXAMPLES=OFF",
  "-DLLAMA_BUILD_SERVER=ON",
] as const;

async function exists(p: string): Promise<boolean> {
  return await fs.stat(p).then(() => true, () => false);
}

/** Runs a build step with its output appended to the log; `onLine` sees each stdout line. */
async function run(
  cmd: string,
  args: string[],
  cwd: string,
  onLine?: (line: string) => void,
): Promise<void> {
  const log = await Deno.open(BUILD_LOG, { write: true, create: true, append: true });
  const enc = new TextEncoder();
  await log.write(enc.encode(`\n$ ${cmd} ${args.join(" ")}\n`));
  const child = new Deno.Command(cmd, { args, cwd, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  const pump = async (s: ReadableStream<Uint8Array>, lines: boolean) => {
    const dec = new TextDecoder();
    let rest = "";
    for await (const chunk of s) {
      await log.write(chunk);
      if (!lines || !onLine) continue;
      rest += dec.decode(chunk, { stream: true });
      const parts = rest.split(/\r?\n/);
      rest = parts.pop() ?? "";
      for (const p of parts) onLine(p);
    }
  };
  await Promise.all([pump(child.stdout, true), pump(child.stderr, false)]);
  const status = await child.status;
  log.close();
  if (!status.success) {
    throw new Error(
      `${cmd} ${
        args.slice(0, 3).join(" ")
      }… failed (exit ${status.code}); last lines of ${BUILD_LOG}:\n${await tailFile(
        BUILD_LOG,
        12,
      )}`,
    );
  }
}

/** A build tool: the pinned wheel's in the venv (setup installs cmake and ninja there), else the system's. */
async function tool(name: string): Promise<string> {
  const own = path.join(VENV, "bin", name);
  return (await exists(own)) ? own : name;
}

async function have(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Build progress from one line of ninja (`[12/345] …`) or make (`[ 45%] …`) output, as a fraction. */
export function progressOf(line: string): { done: number; total: number } | undefined {
  const ninja = line.match(/^\[(\d+)\/(\d+)\]/);
  if (ninja) return { done: Number(ninja[1]), total: Number(ninja[2]) };
  const make = line.match(/^\[\s*(\d+)%\]/);
  return make ? { done: Number(make[1]), total: 100 } : undefined;
}

/** Seconds as `7m05s` (or `42s`). */
export function mmss(seconds: number): string {
  const total = Math.round(seconds);
  const m = Math.floor(total / 60);
  return m ? `${m}m${String(total % 60).padStart(2, "0")}s` : `${total}s`;
}

/**
 * Reports build progress: a live bar with an estimate on a terminal; otherwise (CI, logs) one line per 10%
 * and at least one a minute, each with the time spent and an estimate of the time left.
 */
export function progressReporter(log: (s: string) => void, tty = Deno.stdout.isTerminal()) {
  const t0 = performance.now();
  let lastPct = -1;
  let lastAt = 0;
  const bar = tty
    ? new cliProgress.SingleBar({
      format:
        "[setup] llama-server build {bar} {percentage}% | {value}/{total} | {duration_formatted} | ~{eta_formatted} left",
      etaBuffer: 50,
    }, cliProgress.Presets.shades_classic)
    : undefined;
  let started = false;
  return {
    line(l: string): void {
      const p = progressOf(l);
      if (!p || p.total === 0) return;
      if (bar) {
        if (!started) bar.start(p.total, 0);
        started = true;
        bar.setTotal(p.total);
        bar.update(p.done);
        return;
      }
      const pct = Math.floor((100 * p.done) / p.total);
      const secs = (performance.now() - t0) / 1000;
      if (Math.floor(pct / 10) > Math.floor(lastPct / 10) || secs - lastAt >= 60) {
        const left = p.done > 0 ? (secs * (p.total - p.done)) / p.done : NaN;
        log(
          `llama-server build ${pct}% (${p.done}/${p.total}), ${mmss(secs)} so far${
            Number.isFinite(left) && pct < 100 ? `, ~${mmss(left)} left` : ""
          }`,
        );
        lastPct = pct;
        lastAt = secs;
      }
    },
    stop(): void {
      if (started) bar?.stop();
    },
  };
}

async function fetchSource(src: string): Promise<void> {
  const dl = path.join(CM2_DIR, "downloads", "llama");
  await fs.rm(dl, { recursive: true, force: true });
  await fs.mkdir(dl, { recursive: true });
  await run("npm", ["pack", LLAMA_SOURCE_PACKAGE, "--silent"], dl);
  const tgz = (await fs.readdir(dl)).find((f) => f.endsWith(".tgz"));
  if (!tgz) throw new Error("npm pack produced no tarball");
  await run("tar", ["xzf", tgz, "package/llama/gitRelease.bundle"], dl);
  await fs.rm(src, { recursive: true, force: true });
  await run("git", ["clone", "--quiet", path.join(dl, "package/llama/gitRelease.bundle"), src], dl);
  await fs.rm(dl, { recursive: true, force: true });
}

function wantedBuild(): string {
  return JSON.stringify({ source: LLAMA_SOURCE_PACKAGE, cmake: CMAKE_ARGS });
}

/** Builds the portable llama-server when the build is missing or was made another way; throws on failure. */
async function build(log: (s: string) => void): Promise<void> {
  await fs.mkdir(path.dirname(BUILD_LOG), { recursive: true });
  const src = path.join(LLAMA_DIR, "src");
  if (!(await exists(path.join(src, "CMakeLists.txt")))) {
    log(`fetching llama.cpp source from the npm package ${LLAMA_SOURCE_PACKAGE}`);
    await fetchSource(src);
  }
  const dir = path.join(LLAMA_DIR, "build");
  await fs.rm(dir, { recursive: true, force: true });
  await fs.rm(BUILD_INFO, { force: true });
  const cmake = await tool("cmake");
  const ninja = await tool("ninja");
  const generator = (await have(ninja)) ? ["-G", "Ninja", `-DCMAKE_MAKE_PROGRAM=${ninja}`] : [];
  const cores = navigator.hardwareConcurrency || 2;
  log(
    `building llama-server with every CPU variant (once; ~20 min on 2 cores; ${cores} jobs; log: ${BUILD_LOG})`,
  );
  await run(cmake, ["-S", src, "-B", dir, ...generator, ...CMAKE_ARGS], LLAMA_DIR);
  const progress = progressReporter(log);
  const t0 = performance.now();
  try {
    await run(
      cmake,
      ["--build", dir, "--target", "llama-server", "-j", String(cores)],
      LLAMA_DIR,
      progress.line,
    );
  } finally {
    progress.stop();
  }
  await fs.writeFile(BUILD_INFO, wantedBuild());
  log(`built in ${mmss((performance.now() - t0) / 1000)}`);
}

/** Whether a build made with today's configuration is present (it may not have been checked yet). */
export async function isBuilt(): Promise<boolean> {
  return await exists(path.join(LLAMA_BUILD_BIN, "llama-server")) &&
    (await fs.readFile(BUILD_INFO, "utf8").catch(() => "")) === wantedBuild();
}

/**
 * Returns the checked launcher of llama-server, building the program first if needed and smoke-testing it
 * on this CPU unless a stored check of this very build on this very CPU says it passed. Returns undefined,
 * with the reason logged, when the toolchain is missing, the build fails, or no configuration passes.
 */
export async function ensureLlamaServer(
  log: (s: string) => void,
  opts: { recheck?: boolean } = {},
): Promise<string | undefined> {
  try {
    if (!(await isBuilt())) {
      for (const t of ["git", await tool("cmake"), "c++"]) {
        if (!(await have(t))) {
          log(
            `${
              path.basename(t)
            } not found: using the prebuilt llama.node server (slow on CPUs without its SIMD code)`,
          );
          return undefined;
        }
      }
      await build(log);
    }
    const check = await ensureChecked(INSTALLED, log, opts.recheck ?? false);
    if (check.ok) return LLAMA_SERVER_BIN;
    log(`llama-server cannot run here (${check.reason}); using the prebuilt llama.node server instead`);
    return undefined;
  } catch (err) {
    log(`llama-server build failed (${(err as Error).message}); using the prebuilt llama.node server`);
    return undefined;
  }
}

/** Where a build, its run directory, its check and its launcher live. */
export interface LlamaPaths {
  buildBin: string;
  runDir: string;
  checkFile: string;
  launcher: string;
  gguf: string;
}

const INSTALLED: LlamaPaths = {
  buildBin: LLAMA_BUILD_BIN,
  runDir: LLAMA_RUN_DIR,
  checkFile: LLAMA_CHECK_FILE,
  launcher: LLAMA_SERVER_BIN,
  gguf: GGUF_PATH,
};

/**
 * The stored check when it is for this build on this CPU; otherwise a new one, stored, with the launcher
 * written when it passed (and removed when it did not).
 */
export async function ensureChecked(
  p: LlamaPaths,
  log: (s: string) => void,
  recheck = false,
): Promise<LlamaCheck> {
  const [cpu, id, stored] = await Promise.all([cpuInfo(), buildId(p.buildBin), readCheck(p.checkFile)]);
  const same = stored && stored.build === id && stored.cpu.fingerprint === cpu.fingerprint;
  if (same && !recheck && (stored.ok ? await exists(p.launcher) : true)) return stored;
  if (stored && stored.cpu.fingerprint !== cpu.fingerprint) {
    log(`llama-server was checked on another CPU (${stored.cpu.model}); checking it again on ${cpu.model}`);
  } else {
    log(`checking llama-server on this CPU (${cpu.model}): load the model, complete a few tokens`);
  }
  await fs.rm(p.launcher, { force: true });
  const check = await checkBuild({ buildBin: p.buildBin, runDir: p.runDir, gguf: p.gguf, log });
  // A failure that is not the CPU's (no model yet, say) is not stored: the next start tries again.
  if (check.ok || check.attempts.some((a) => !a.ok && /SIG[A-Z]+/.test(a.outcome))) {
    await writeCheck(p.checkFile, check);
  }
  if (check.ok) await writeLauncher(p.launcher, p.runDir, check);
  return check;
}

if (import.meta.main) {
  const bin = await ensureLlamaServer((s) => console.log(`[llama] ${s}`), {
    recheck: Deno.args.includes("--recheck"),
  });
  console.log(bin ?? "not available");
  Deno.exit(bin ? 0 : 1);
}
