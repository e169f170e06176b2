/**
 * `deno task bench:learning`: does cm2 make the embedded policy better, measured on held-out tasks?
 *
 * Runs the learning pipeline (`recipes/pipeline-learning.json`) on the embedded stack through `deno task start
 * --pipeline`: the split of `data/learning/tool_tasks.jsonl` (SFT / RL / held-out, disjoint), a short cold-start
 * SFT of SmolLM2-135M, a validation pass of the raw base model, then RL from the SFT checkpoint with the LoRA
 * recipe `recipes/learning.json` (validation before the first update, every k iterations and after the last).
 * Every checklist item is program-checked, so the reward is exact and no judge model runs.
 *
 * Then it reads the run's validation and training metrics from the store, writes the report (curve and
 * diagnostics) to the store as `runs/<name>/learning`, and ends with one JSON line:
 * `{"iterations","val_reward_before","val_reward_after","delta","ci95_low","ci95_high","zero_variance_groups",
 * "seconds"}` (`core/learning.ts`: the interval is a paired bootstrap over held-out tasks × samples).
 *
 * Flags: `--iterations N` (default: the recipe's 20), `--name NAME` (default `learning-<time>`), `--report-only`
 * (skip the run; report on an existing pipeline `--name`, with `--seconds S` its wall time if known).
 *
 * @module
 */
import * as path from "node:path";
import { parseArgs } from "node:util";
import { loadRunConfig } from "../config.ts";
import { storeNames } from "../core/names.ts";
import { learningReport, type TrainIteration, type ValidationPass } from "../core/learning.ts";
import { type ArtifactStore, getJson, putJson, type Ref } from "../store/mod.ts";
import { openStore } from "../store/open.ts";
import { ROOT } from "./paths.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    iterations: { type: "string" },
    name: { type: "string" },
    "report-only": { type: "boolean", default: false },
    seconds: { type: "string" },
  },
});

const RECIPE = path.join(ROOT, "recipes", "pipeline-learning.json");
const CONFIG = path.join(ROOT, "recipes", "learning.json");
const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15).toLowerCase();
const name = values.name ?? `learning-${stamp}`;

interface Metrics {
  iteration: number;
  validation: boolean;
  meanReward: number;
  rewards: Ref;
  update: TrainIteration["update"] & Record<string, unknown> | null;
}
interface Rewards {
  groups: { uuid: string; episodes: { ok: boolean; reward: number }[] }[];
}

/** The metrics documents of a run, by kind (`it` or `val`), sorted by iteration. */
async function metricsOf(store: ArtifactStore, run: string, kind: "it" | "val"): Promise<Metrics[]> {
  const prefix = storeNames.metrics(run, kind, 0).replace(/0$/, "");
  const out: Metrics[] = [];
  for (const n of await store.listNames(prefix)) {
    const ref = await store.getName(n);
    if (ref) out.push(await getJson<Metrics>(store, ref));
  }
  return out.sort((a, b) => a.iteration - b.iteration);
}

/** A validation pass: every episode's reward by held-out record (a failed episode counts 0). */
async function validationPass(store: ArtifactStore, m: Metrics): Promise<ValidationPass> {
  const r = await getJson<Rewards>(store, m.rewards);
  const tasks: Record<string, number[]> = {};
  for (const g of r.groups) tasks[g.uuid] = [...(tasks[g.uuid] ?? []), ...g.episodes.map((e) => e.reward)];
  return { iteration: m.iteration, tasks };
}

async function trainIteration(store: ArtifactStore, m: Metrics): Promise<TrainIteration> {
  const r = await getJson<Rewards>(store, m.rewards);
  const zero = r.groups.filter((g) => {
    const rs = g.episodes.map((e) => e.reward);
    return rs.length > 1 && rs.every((x) => Math.abs(x - rs[0]!) < 1e-12);
  }).length;
  return {
    iteration: m.iteration,
    meanReward: m.meanReward,
    groups: r.groups.length,
    zeroVarianceGroups: zero,
    rewards: r.groups.flatMap((g) => g.episodes.map((e) => e.reward)),
    update: m.update,
  };
}

const t0 = performance.now();
if (!values["report-only"]) {
  const args = ["run", "-A", path.join(ROOT, "scripts", "start.ts"), "--pipeline", RECIPE, "--name", name];
  if (values.iterations) args.push("--iterations", values.iterations);
  const child = new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdout: "inherit", stderr: "inherit" });
  const status = await child.spawn().status;
  if (!status.success) {
    console.error(`[bench] the learning pipeline failed (exit code ${status.code}); see the lines above`);
    Deno.exit(1);
  }
}
// with --report-only, the wall time of the run being reported, when known (`--seconds`)
const seconds = values.seconds !== undefined ? Number(values.seconds) : (performance.now() - t0) / 1000;

const config = await loadRunConfig(CONFIG);
const store = openStore(config.store.url, ROOT);
const validation = await Promise.all(
  (await metricsOf(store, name, "val")).map((m) => validationPass(store, m)),
);
const train = await Promise.all((await metricsOf(store, name, "it")).map((m) => trainIteration(store, m)));
const baseMetrics = (await metricsOf(store, `${name}-base`, "val"))[0];
const base = baseMetrics ? await validationPass(store, baseMetrics) : undefined;
const report = learningReport({ validation, train, ...(base ? { base } : {}), seconds });
const ref = await putJson(store, { schema: "cm2.learning/v1", run: name, ...report });
await store.setName(`runs/${name}/learning`, ref);

console.log(
  `[bench] validation curve: ${report.curve.map((c) => `it ${c.iteration} ${c.reward}`).join(", ")}`,
);
if (report.base) {
  console.log(
    `[bench] over the raw base model (${report.base.val_reward}): ${report.base.delta} ` +
      `[${report.base.ci95_low}, ${report.base.ci95_high}]`,
  );
}
for (const t of report.train) {
  console.log(
    `[bench] it ${t.iteration}: reward ${t.reward}, zero-variance groups ${t.zeroVarianceShare}, kl ${
      t.kl?.toExponential(2) ?? "-"
    }, entropy ${t.entropy?.toFixed(3) ?? "-"}, grad norm ${t.gradNorm?.toFixed(3) ?? "-"}, clip ${
      t.clipFrac?.toFixed(3) ?? "-"
    }`,
  );
}
console.log(`[bench] reward histogram (5 bins of [0,1]): ${JSON.stringify(report.rewardHistogram)}`);
console.log(`[bench] report: ${store.locate(ref)} (name runs/${name}/learning)`);
console.log(JSON.stringify(report.line));
