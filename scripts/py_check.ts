/**
 * `deno task check:py`: the trainer's and the evaluation harness's Python hygiene, as `deno fmt/lint/check` are the TypeScript side's:
 * `ruff check`, `ruff format --check` and `mypy` (pinned in `trainer/pyproject.toml`, configured there).
 * `task test` runs the same checks and counts each as a test. Runtime: Deno.
 *
 * @module
 */
import * as path from "node:path";
import { ROOT, VENV } from "./paths.ts";

const EVAL_VENV = path.join(ROOT, ".cm2", "eval-venv");

/** The checks: name and command line (from the repository root). */
export const PY_CHECKS: { name: string; cmd: string; args: string[] }[] = [
  { name: "ruff check", cmd: path.join(VENV, "bin", "ruff"), args: ["check", "trainer"] },
  {
    name: "ruff format --check",
    cmd: path.join(VENV, "bin", "ruff"),
    args: ["format", "--check", "trainer"],
  },
  {
    name: "mypy cm2_trainer",
    cmd: path.join(VENV, "bin", "mypy"),
    args: ["--config-file", "trainer/pyproject.toml", "trainer/cm2_trainer"],
  },
  // The evaluation harness (its own venv; configured by evalharness/ruff.toml).
  { name: "ruff check evalharness", cmd: path.join(VENV, "bin", "ruff"), args: ["check", "evalharness"] },
  {
    name: "ruff format --check evalharness",
    cmd: path.join(VENV, "bin", "ruff"),
    args: ["format", "--check", "evalharness"],
  },
  {
    name: "mypy cm2_eval",
    cmd: path.join(EVAL_VENV, "bin", "mypy"),
    args: ["--ignore-missing-imports", "--cache-dir", ".cm2/mypy-eval", "evalharness/cm2_eval"],
  },
];

/** Runs every check, printing its output; returns the names of those that failed. */
export async function runPyChecks(): Promise<{ passed: string[]; failed: string[] }> {
  const passed: string[] = [];
  const failed: string[] = [];
  for (const c of PY_CHECKS) {
    const out = await new Deno.Command(c.cmd, { args: c.args, cwd: ROOT, stdout: "piped", stderr: "piped" })
      .output().catch((err: Error) => ({
        success: false,
        stdout: new Uint8Array(),
        stderr: new TextEncoder().encode(`${err.message} (run deno task setup)`),
      }));
    const text = (new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr)).trim();
    console.log(`[py] ${c.name}: ${out.success ? "ok" : "FAILED"}${out.success ? "" : `\n${text}`}`);
    (out.success ? passed : failed).push(c.name);
  }
  return { passed, failed };
}

if (import.meta.main) {
  const { failed } = await runPyChecks();
  Deno.exit(failed.length ? 1 : 0);
}
