/**
 * `cm2 eval` end to end on a real Temporal dev server, with the benchmarks' own graders (BFCL v4's executable
 * multi-turn environments and checker, through `evalharness/`) and a scripted policy endpoint (TEST DOUBLE,
 * `evalharness/tests/scripted_endpoint.py`) that replays each entry's ground truth:
 *
 * - the right policy scores 1 on every task, the same policy with one wrong argument scores 0, and `cm2 eval
 *   compare` puts the difference with its interval; `cm2 eval export` writes one line per task;
 * - a second `cm2 eval` of the same policy runs nothing (every result comes from the store);
 * - a worker killed in the middle of an evaluation: the rerun pays only for the unfinished tasks.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { evalPaths } from "../../activities/eval.ts";
import { ROOT } from "../../config.ts";
import { selectTasks } from "../../core/eval.ts";
import { spawnWorker } from "../../scripts/worker_process.ts";
import { FsStore } from "../../store/fs_store.ts";
import { uniqueQueue, useTemporal } from "../harness/temporal.ts";

const CATEGORY = "multi_turn_base";
const paths = evalPaths(ROOT);
const ignore = !(await fs.stat(paths.python).then(() => true, () => false));

/** `python -m cm2_eval <args>` → its JSON line. */
async function harness(args: string[]): Promise<Record<string, unknown>> {
  const out = await new Deno.Command(paths.python, {
    args: ["-m", "cm2_eval", ...args],
    env: { PYTHONPATH: paths.harness },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr).slice(-1500));
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
}

/** The scripted endpoint for some BFCL tasks (right, or with one wrong argument), logging its requests. */
async function endpoint(dir: string, name: string, scripts: unknown[]) {
  const script = path.join(dir, `${name}.json`);
  const portFile = path.join(dir, `${name}.port`);
  const log = path.join(dir, `${name}.log`);
  await fs.writeFile(script, JSON.stringify({ mode: "by_first_user", scripts }));
  const proc = new Deno.Command(paths.python, {
    args: [
      path.join(paths.harness, "tests", "scripted_endpoint.py"),
      "--script",
      script,
      "--port-file",
      portFile,
      "--log",
      log,
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  for (let i = 0; !(await fs.stat(portFile).then(() => true, () => false)); i++) {
    assert.ok(i < 200, "the scripted endpoint started");
    await new Promise((r) => setTimeout(r, 50));
  }
  const port = Number(await fs.readFile(portFile, "utf8"));
  return {
    url: `http://127.0.0.1:${port}/v1`,
    /** Requests so far that open a task (one user message, no assistant yet), by first-message hash. */
    async opens(): Promise<Map<string, number>> {
      const text = await fs.readFile(log, "utf8").catch(() => "");
      const m = new Map<string, number>();
      for (const line of text.split("\n").filter(Boolean)) {
        const r = JSON.parse(line) as { first_user: string; users: number; assistants: number };
        if (r.users === 1 && r.assistants === 0) m.set(r.first_user, (m.get(r.first_user) ?? 0) + 1);
      }
      return m;
    },
    async requests(): Promise<number> {
      return (await fs.readFile(log, "utf8").catch(() => "")).split("\n").filter(Boolean).length;
    },
    async stop() {
      proc.kill("SIGTERM");
      await proc.status;
    },
  };
}

async function sha16(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16);
}

/** Runs `cm2 eval …` as a user would; resolves with its exit code and output. */
function cli(address: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path.join(ROOT, "client.ts"), "eval", ...args],
    env: { TEMPORAL_ADDRESS: address, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return child.output().then((o) => ({
    code: o.code,
    stdout: new TextDecoder().decode(o.stdout),
    stderr: new TextDecoder().decode(o.stderr),
  }));
}

/**
 * Where the wrong policy puts its one wrong argument: the last call of the turn with the most calls, which
 * changes state or a result BFCL's checker compares (a wrong flag of a read-only `ls` it does not notice).
 */
function wrongCall(turns: string[][]): { turn: number; call: number } {
  const turn = turns.reduce((best, t, i) => (t.length > turns[best]!.length ? i : best), 0);
  return { turn, call: turns[turn]!.length - 1 };
}

/** The first `n` tasks `--limit n` picks, with the scripts that replay them (`mutate`: one wrong argument). */
async function tasksAndScripts(n: number) {
  const listed = await harness(["tasks", "--bench", "bfcl", "--category", CATEGORY]);
  const ids = selectTasks(listed.tasks as string[], n, 0);
  const refs = await Promise.all(
    ids.map((id) => harness(["reference", "--bench", "bfcl", "--category", CATEGORY, "--task", id])),
  );
  const firstUser = (r: Record<string, unknown>) =>
    ((r.questions as { role: string; content: string }[][])[0]!.find((m) => m.role === "user")!).content;
  const scripts = (mutate: boolean) =>
    refs.map((r) => ({
      ...r,
      mode: "bfcl",
      first_user: firstUser(r),
      mutate: mutate ? wrongCall(r.turns as string[][]) : null,
    }));
  return { ids, scripts, hashes: await Promise.all(refs.map((r) => sha16(firstUser(r)))) };
}

Deno.test({
  name:
    "cm2 eval: BFCL's own checker passes the right policy and fails a wrong argument; compare, export, reuse",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const temporal = await useTemporal();
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-eval-"));
    const { scripts, hashes } = await tasksAndScripts(2);
    const right = await endpoint(dir, "right", scripts(false));
    const wrong = await endpoint(dir, "wrong", scripts(true));
    const queue = uniqueQueue("eval");
    const common = [
      "--bench",
      "bfcl",
      "--category",
      CATEGORY,
      "--limit",
      "2",
      "--store",
      dir,
      "--task-queue",
      queue,
    ];
    try {
      const a = await cli(temporal.address, ["--endpoint", right.url, "--model", "right", ...common]);
      assert.equal(a.code, 0, a.stderr);
      assert.match(a.stdout, /right\s+bfcl\s+multi_turn_base\s+2×1\s+100\.0\s+\[100\.0, 100\.0\]/);
      const b = await cli(temporal.address, ["--endpoint", wrong.url, "--model", "wrong", ...common]);
      assert.equal(b.code, 0, b.stderr);
      assert.match(b.stdout, /wrong\s+bfcl\s+multi_turn_base\s+2×1\s+0\.0\s/);
      for (const h of hashes) {
        assert.equal((await right.opens()).get(h), 1, "each task ran once for the right policy");
        assert.equal((await wrong.opens()).get(h), 1, "each task ran once for the wrong policy");
      }

      // The stored results, one per task, under content keys; the workflow's record beside them.
      const names = await new FsStore(dir).listNames("evals/");
      assert.equal(names.filter((n) => n.includes("/multi_turn_base/")).length, 4, names.join("\n"));
      assert.equal(names.filter((n) => n.includes("/runs/")).length, 2);

      const cmp = await cli(temporal.address, ["compare", "right", "wrong", "--store", dir]);
      assert.equal(cmp.code, 0, cmp.stderr);
      assert.match(cmp.stdout, /bfcl\s+multi_turn_base\s+2\s+100\.0\s+0\.0\s+-100\.0\s+\[-100\.0, -100\.0\]/);

      const out = path.join(dir, "right.jsonl");
      const ex = await cli(temporal.address, ["export", "right", "--out", out, "--store", dir]);
      assert.equal(ex.code, 0, ex.stderr);
      const lines = (await fs.readFile(out, "utf8")).trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines.length, 2);
      for (const l of lines) {
        assert.equal(l.benchmark, "bfcl");
        assert.equal(l.score, 1);
        assert.equal(l.error, null);
        assert.ok(l.tokens > 0 && l.seconds > 0, JSON.stringify(l));
      }

      // The same evaluation again: every result from the store, no request to the endpoint.
      const before = await right.requests();
      const again = await cli(temporal.address, ["--endpoint", right.url, "--model", "right", ...common]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /right\s+bfcl\s+multi_turn_base\s+2×1\s+100\.0/);
      assert.equal(await right.requests(), before, "a rerun asks the endpoint nothing");
    } finally {
      await right.stop();
      await wrong.stop();
      await fs.rm(dir, { recursive: true, force: true });
      await temporal.release();
    }
  },
});

Deno.test({
  name: "cm2 eval: a worker killed mid-evaluation; the rerun pays only for the unfinished tasks",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const temporal = await useTemporal();
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-eval-kill-"));
    const { ids, scripts, hashes } = await tasksAndScripts(4);
    const right = await endpoint(dir, "right", scripts(false));
    const queue = uniqueQueue("eval");
    const worker = () =>
      spawnWorker(temporal.address, uniqueQueue("orch"), dir, { workerArgs: ["--eval-queue", queue] });
    let w = worker();
    try {
      const run = cli(temporal.address, [
        ...["--endpoint", right.url, "--model", "right", "--bench", "bfcl", "--category", CATEGORY],
        ...["--limit", "4", "--concurrency", "1", "--store", dir, "--task-queue", queue, "--no-worker"],
      ]);
      const store = new FsStore(dir);
      const results = async () =>
        (await store.listNames("evals/")).filter((n) => n.includes(`/${CATEGORY}/`));
      for (let i = 0; (await results()).length < 1; i++) {
        assert.ok(i < 1_200, "a task finished before the kill");
        await new Promise((r) => setTimeout(r, 100));
      }
      w.kill("SIGKILL");
      await w.status;
      const atKill = await results();
      const finished = ids.flatMap((id, k) => atKill.some((n) => n.includes(`/${id}/`)) ? [hashes[k]!] : []);
      assert.ok(
        finished.length >= 1 && finished.length < 4,
        `${finished.length} tasks finished before the kill`,
      );
      w = worker();
      const done = await run;
      assert.equal(done.code, 0, done.stderr);
      assert.match(done.stdout, /right\s+bfcl\s+multi_turn_base\s+4×1\s+100\.0/);
      const opens = await right.opens();
      for (const h of finished) {
        assert.equal(opens.get(h), 1, "a task finished before the kill is not run again");
      }
      const again = hashes.filter((h) => (opens.get(h) ?? 0) > 1);
      assert.ok(again.length <= 1, `only the task in flight at the kill may run twice; ${again.length} did`);
      assert.equal(hashes.filter((h) => opens.get(h)).length, 4, "every task ran");
      assert.equal((await results()).length, 4);
    } finally {
      w.kill("SIGKILL");
      await w.status.catch(() => {});
      await right.stop();
      await fs.rm(dir, { recursive: true, force: true });
      await temporal.release();
    }
  },
});
