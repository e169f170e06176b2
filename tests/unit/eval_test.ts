import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  categoriesOf,
  compareResults,
  DEFAULT_SETTINGS,
  type EvalResult,
  evalWorkflowId,
  exportLine,
  policyKey,
  resultName,
  selectTasks,
  summarize,
} from "../../core/eval.ts";
import { prng } from "../../core/sampling.ts";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const policy = { label: "demo-it-2", identity: "checkpoint abc" };

function result(task: string, score: number, over: Partial<EvalResult> = {}): EvalResult {
  return {
    schema: "cm2.eval-result/v1",
    policy,
    bench: "bfcl",
    version: "bfcl-eval==2026.3.23",
    category: "multi_turn_base",
    task,
    trial: 0,
    settings: DEFAULT_SETTINGS,
    score,
    passed: score === 1,
    error: null,
    tokens: { prompt: 10, completion: 5 },
    steps: 2,
    seconds: 1.5,
    detail: {},
    ...over,
  };
}

Deno.test("categoriesOf(): defaults, checks names, refuses what needs the internet with the reason", () => {
  assert.deepEqual(categoriesOf("tau2"), ["airline", "retail", "telecom"]);
  assert.deepEqual(categoriesOf("tau2", ["mock"]), ["mock"]);
  assert.throws(() => categoriesOf("bfcl", ["web_search_base"]), /needs the internet|need the internet/);
  assert.throws(
    () => categoriesOf("bfcl", ["multi_turn_typo"]),
    /no category "multi_turn_typo"; allowed: multi_turn_base/,
  );
});

Deno.test("selectTasks(): a fixed seeded subset, the same every time, all in order without a limit", () => {
  const ids = Array.from({ length: 50 }, (_, i) => `t${i}`);
  const a = selectTasks(ids, 10, 7);
  assert.equal(a.length, 10);
  assert.deepEqual(selectTasks(ids, 10, 7), a);
  assert.notDeepEqual(selectTasks(ids, 10, 8), a);
  assert.equal(new Set(a).size, 10);
  assert.deepEqual(selectTasks(ids, null, 7), ids);
  assert.deepEqual(selectTasks(ids, 99, 7), ids);
});

Deno.test("resultName(): equal experiments share a name; policy, version, task, trial or settings change it", () => {
  const at = {
    bench: "bfcl" as const,
    version: "bfcl-eval==2026.3.23",
    category: "multi_turn_base",
    task: "multi_turn_base_3",
    trial: 0,
    settings: DEFAULT_SETTINGS,
  };
  const name = resultName(policy, at, sha);
  assert.equal(resultName(policy, { ...at }, sha), name);
  assert.match(
    name,
    /^evals\/demo-it-2-[0-9a-f]{10}\/bfcl\/bfcl-eval-2026\.3\.23-[0-9a-f]{12}\/multi_turn_base\//,
  );
  const others = [
    resultName({ ...policy, identity: "checkpoint def" }, at, sha),
    resultName(policy, { ...at, version: "bfcl-eval==2027.1.1" }, sha),
    resultName(policy, { ...at, task: "multi_turn_base_4" }, sha),
    resultName(policy, { ...at, trial: 1 }, sha),
    resultName(policy, { ...at, settings: { ...DEFAULT_SETTINGS, maxTokens: 256 } }, sha),
  ];
  assert.equal(new Set([name, ...others]).size, 6);
  // A task id with characters a store name cannot hold (τ² telecom) still gets a safe, distinct segment.
  const odd = resultName(policy, { ...at, task: "[mobile_data]airplane|on" }, sha);
  assert.match(odd.split("/")[5]!, /^[A-Za-z0-9._-]+$/);
  assert.notEqual(odd, resultName(policy, { ...at, task: "[mobile_data]airplane|off" }, sha));
  assert.match(
    evalWorkflowId(policy, "bfcl", { limit: 20 }, sha),
    new RegExp(`^eval/${policyKey(policy, sha)}/bfcl/`),
  );
});

Deno.test("summarize(): failures count as 0 with their reason; the interval brackets the mean", () => {
  const rs = [
    result("a", 1),
    result("b", 0),
    result("c", 1, { error: { kind: "EndpointUnreachable", message: "gone" }, score: 1 }),
    result("d", 1),
  ];
  const [row] = summarize(rs);
  assert.equal(row!.tasks, 4);
  assert.equal(row!.score, 0.5, "the failed task counts 0 even though its record says 1");
  assert.deepEqual(row!.failures, { EndpointUnreachable: 1 });
  assert.ok(row!.ci95[0] <= 0.5 && 0.5 <= row!.ci95[1]);
  assert.equal(row!.tokens, 60);
  assert.match(exportLine(rs[2]!), /"score":0,.*"error":"EndpointUnreachable: gone"/);
});

Deno.test("compareResults(): a real improvement has an interval above 0, no difference one around 0", () => {
  const r = prng(3);
  const tasks = Array.from({ length: 60 }, (_, i) => `t${i}`);
  const base = tasks.map((t) => result(t, r() < 0.3 ? 1 : 0));
  const better = tasks.map((t, i) => result(t, base[i]!.score === 1 || r() < 0.5 ? 1 : 0));
  const { rows } = compareResults(base, better);
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!.tasks, 60);
  assert.ok(rows[0]!.delta > 0.2, `delta ${rows[0]!.delta}`);
  assert.ok(rows[0]!.ci95[0] > 0, `interval ${rows[0]!.ci95}`);
  const same = compareResults(base, base).rows[0]!;
  assert.equal(same.delta, 0);
  assert.ok(same.ci95[0] <= 0 && same.ci95[1] >= 0);
  const other = compareResults(base, [result("t0", 1, { category: "multi_turn_long_context" })]);
  assert.deepEqual(other.rows, []);
  assert.deepEqual(other.unpaired.sort(), ["bfcl/multi_turn_base", "bfcl/multi_turn_long_context"]);
});
