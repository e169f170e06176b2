/**
 * Builds llama.cpp's `llama-server` for the embedded judge / simulator / labeler, once, under
 * `.cm2/llama.cpp/`. The source is the llama.cpp release that the npm package `node-llama-cpp`
 * (pinned) ships as a git bundle, so nothing comes from outside the package registries, and it is
 * compiled for this CPU (`GGML_NATIVE`, AVX2 where present). The prebuilt `@fugood/llama.node`
 * binary (`serve/llama_server.ts`) has no AVX code and reads prompts at ~10 tokens/s on 2 cores;
 * this build is the fast path. It needs git, cmake and a C++ compiler; without them `task start`
 * falls back to `serve/llama_server.ts`. Runtime: Deno.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { CM2_DIR } from "./paths.ts";

/** The npm package (and version) whose tarball carries the llama.cpp source bundle. */
export const LLAMA_SOURCE_PACKAGE = "node-llama-cpp@3.22.1";
export const LLAMA_DIR = path.join(CM2_DIR, "llama.cpp");
export const LLAMA_SERVER_BIN = path.join(LLAMA_DIR, "build", "bin", "llama-server");

async function exists(p: string): Promise<boolean> {
  return await fs.stat(p).then(() => true, () => false);
}

async function run(cmd: string, args: string[], cwd: string, logFile: string): Promise<void> {
  const log = await Deno.open(logFile, { write: true, create: true, append: true });
  const child = new Deno.Command(cmd, { args, cwd, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  await Promise.all([
    child.stdout.pipeTo(log.writable, { preventClose: true }),
    child.stderr.pipeTo((await Deno.open(logFile, { write: true, append: true })).writable),
  ]);
  const status = await child.status;
  log.close();
  if (!status.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${status.code}); see ${logFile}`);
  }
}

async function have(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

/**
 * Returns the path of a built `llama-server`, building it first if needed (several minutes on 2
 * cores, once); returns undefined when the toolchain is missing or the build fails (with the reason).
 */
export async function ensureLlamaServer(log: (s: string) => void): Promise<string | undefined> {
  if (await exists(LLAMA_SERVER_BIN)) return LLAMA_SERVER_BIN;
  for (const tool of ["git", "cmake", "c++"]) {
    if (!(await have(tool))) {
      log(`${tool} not found: using the prebuilt llama.node server (slow on CPUs without its SIMD code)`);
      return undefined;
    }
  }
  const logFile = path.join(CM2_DIR, "logs", "llama-build.log");
  await fs.mkdir(path.dirname(logFile), { recursive: true });
  const dl = path.join(CM2_DIR, "downloads", "llama");
  const src = path.join(LLAMA_DIR, "src");
  try {
    if (!(await exists(path.join(src, "CMakeLists.txt")))) {
      log(`fetching llama.cpp source from the npm package ${LLAMA_SOURCE_PACKAGE}`);
      await fs.rm(dl, { recursive: true, force: true });
      await fs.mkdir(dl, { recursive: true });
      await run("npm", ["pack", LLAMA_SOURCE_PACKAGE, "--silent"], dl, logFile);
      const tgz = (await fs.readdir(dl)).find((f) => f.endsWith(".tgz"));
      if (!tgz) throw new Error("npm pack produced no tarball");
      await run("tar", ["xzf", tgz, "package/llama/gitRelease.bundle"], dl, logFile);
      await fs.rm(src, { recursive: true, force: true });
      await run(
        "git",
        ["clone", "--quiet", path.join(dl, "package/llama/gitRelease.bundle"), src],
        dl,
        logFile,
      );
    }
    log(`building llama-server for this CPU (once; a few minutes on 2 cores; log: ${logFile})`);
    const build = path.join(LLAMA_DIR, "build");
    await run(
      "cmake",
      [
        "-S",
        src,
        "-B",
        build,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DBUILD_SHARED_LIBS=OFF",
      ],
      LLAMA_DIR,
      logFile,
    );
    await run(
      "cmake",
      ["--build", build, "--target", "llama-server", "-j", String(navigator.hardwareConcurrency || 2)],
      LLAMA_DIR,
      logFile,
    );
    await fs.rm(dl, { recursive: true, force: true });
    return (await exists(LLAMA_SERVER_BIN)) ? LLAMA_SERVER_BIN : undefined;
  } catch (err) {
    log(`llama-server build failed (${(err as Error).message}); using the prebuilt llama.node server`);
    return undefined;
  }
}

if (import.meta.main) {
  const bin = await ensureLlamaServer((s) => console.log(`[llama] ${s}`));
  console.log(bin ?? "not built");
  Deno.exit(bin ? 0 : 1);
}
