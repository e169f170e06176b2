/**
 * Viewer benchmark (`deno task bench:viewer [--iterations 50] [--tasks 250] [--group-size 8] [--opens 30]`): does
 * any episode of a large run open fast? It writes a store holding one run of iterations × tasks × G episodes
 * (default 50 × 250 × 8 = 100,000) the way a run writes it: per iteration a metrics blob and a rewards blob
 * naming every episode's state; the states are real stored engine states (a snapshot and a delta on it, the
 * episode's first policy step on a sample record), shared between episodes so the store stays small (an open
 * reads the same blobs whatever their number). Then it serves the viewer (`ui/server.ts`, fresh, nothing cached)
 * and fetches episode pages of random iterations over HTTP on 127.0.0.1, each from a server that has not read
 * that iteration yet, plus the run page.
 *
 * The last line is one JSON object:
 * `{"episodes","iterations","open_ms_p50","open_ms_p95","open_ms_max","run_page_ms","rewards_blob_kib"}`.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { storeNames } from "../../core/names.ts";
import { FsStore } from "../../store/fs_store.ts";
import { putJson, type Ref } from "../../store/mod.ts";
import { startUiServer } from "../../ui/server.ts";
import { storedPolicyStep } from "../harness/stored_step.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    iterations: { type: "string", default: "50" },
    tasks: { type: "string", default: "250" },
    "group-size": { type: "string", default: "8" },
    opens: { type: "string", default: "30" },
  },
});
const iterations = Number(values.iterations);
const tasks = Number(values.tasks);
const groupSize = Number(values["group-size"]);
const opens = Number(values.opens);
const run = "bench-viewer";

const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-bench-viewer-"));
try {
  const store = new FsStore(dir);
  const states: Ref[] = [];
  for (let i = 0; i < 8; i++) states.push((await storedPolicyStep(store)).result.stateRef);
  let rewardsBytes = 0;
  for (let it = 0; it < iterations; it++) {
    const groups = Array.from({ length: tasks }, (_, t) => {
      const rewards = Array.from({ length: groupSize }, (_, g) => ((t * 7 + g * 3 + it) % 9) / 8);
      const mean = rewards.reduce((a, b) => a + b, 0) / groupSize;
      const std = Math.sqrt(rewards.reduce((a, b) => a + (b - mean) ** 2, 0) / groupSize);
      return {
        taskIndex: t,
        recordIndex: t % 10,
        uuid: `bench-record-${t}`,
        stats: { trajectory: { mean, std, support: groupSize } },
        episodes: rewards.map((reward, g) => ({
          state: states[(t + g) % states.length]!,
          ok: true,
          endReason: "reply-complete",
          reward,
          turnScores: [reward],
          excluded: false,
          steps: 1,
        })),
      };
    });
    const rewardsRef = await putJson(store, {
      schema: "cm2.rewards/v1",
      runName: run,
      iteration: it,
      options: { preset: "fixed", level: "trajectory" },
      groups,
    });
    rewardsBytes = rewardsRef.bytes;
    const metricsRef = await putJson(store, {
      schema: "cm2.metrics/v1",
      iteration: it,
      validation: false,
      episodes: tasks * groupSize,
      failed: 0,
      meanReward: groups.reduce((a, g) => a + g.stats.trajectory.mean, 0) / tasks,
      itemPassRate: 0.5,
      judgeCalls: tasks * groupSize * 3,
      simulatorCalls: 0,
      replayHits: 0,
      updateLoss: 0.01,
      checkpoint: null,
      policyVersion: it + 1,
      seconds: 100,
      rewards: rewardsRef,
      update: { loss: 0.01, kl: 0.001 * it, gradNorm: 0.1, clipFrac: 0, entropy: 2, seconds: 30 },
    });
    await store.setName(storeNames.metrics(run, "it", it), metricsRef);
    if (it % 10 === 9) console.error(`  ${it + 1}/${iterations} iterations written`);
  }

  const timed = async (url: string) => {
    const t0 = performance.now();
    const res = await fetch(url);
    const body = await res.text();
    if (res.status !== 200) throw new Error(`${url}: ${res.status} ${body.slice(0, 300)}`);
    return performance.now() - t0;
  };
  // Iterations opened in a random order, each the first open of that iteration on a fresh server.
  const order = Array.from({ length: iterations }, (_, i) => i).sort(() => Math.random() - 0.5);
  const times: number[] = [];
  for (let k = 0; k < opens; k++) {
    const ui = startUiServer({ store: new FsStore(dir), port: 0, temporalUiPort: 8233 });
    try {
      const it = order[k % order.length]!;
      const task = Math.floor(Math.random() * tasks);
      const ep = Math.floor(Math.random() * groupSize);
      times.push(await timed(`${ui.url}/runs/${run}/it-${it}/task-${task}/ep-${ep}`));
    } finally {
      await ui.stop();
    }
  }
  const ui = startUiServer({ store: new FsStore(dir), port: 0, temporalUiPort: 8233 });
  const runPageMs = await timed(`${ui.url}/runs/${run}`);
  await ui.stop();
  times.sort((a, b) => a - b);
  const q = (p: number) =>
    Number(times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(1));
  console.log(JSON.stringify({
    episodes: iterations * tasks * groupSize,
    iterations,
    open_ms_p50: q(0.5),
    open_ms_p95: q(0.95),
    open_ms_max: Number(times.at(-1)!.toFixed(1)),
    run_page_ms: Number(runPageMs.toFixed(1)),
    rewards_blob_kib: Math.round(rewardsBytes / 1024),
  }));
} finally {
  await fs.rm(dir, { recursive: true, force: true });
}
