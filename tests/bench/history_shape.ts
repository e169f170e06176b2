/**
 * History-shape benchmark (`deno task bench:shape [--tasks 128] [--group-size 48]`, not in CI): one
 * iteration of `tasks × group-size` episodes through Temporal against the scripted model server (TEST
 * DOUBLE, no latency), then the event count and size of the iteration's history, of every task group's, and
 * of a sample of episodes'. The paper's recipe is 128 × 48 = 6,144 episodes; Temporal warns at 10,240 events
 * per history. The last stdout line is one JSON object:
 * `{"tasks","group_size","episodes","seconds","iteration_events","group_events_max","episode_events_max",
 *   "largest":{"id","events","json_bytes"}}` (`json_bytes`: the history as JSON, a proxy for its size).
 *
 * @module
 */
import type { Client } from "@temporalio/client";
import { parseArgs } from "node:util";
import { workflowIds } from "../../core/names.ts";
import { trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    tasks: { type: "string", default: "128" },
    "group-size": { type: "string", default: "48" },
    concurrency: { type: "string", default: "64" },
    "episode-sample": { type: "string", default: "48" },
  },
});
const tasks = Number(values.tasks);
const groupSize = Number(values["group-size"]);

async function measure(client: Client, id: string) {
  const history = await client.workflow.getHandle(id).fetchHistory();
  return { id, events: history.events?.length ?? 0, json_bytes: JSON.stringify(history).length };
}

const temporal = await useTemporal();
const stack = await trainingStack(temporal.address);
const stop = await stack.startWorkers();
const t0 = performance.now();
try {
  const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
    iterations: 1,
    tasksPerIteration: tasks,
    groupSize,
    episodeConcurrency: Number(values.concurrency),
  }, `shape-${crypto.randomUUID().slice(0, 6)}`);
  console.error(`[shape] one iteration of ${tasks} × ${groupSize} = ${tasks * groupSize} episodes`);
  const result = await stack.client.workflow.execute(trainingRun, {
    taskQueue: stack.taskQueue,
    workflowId: workflowIds.run(config.name),
    args: [{ config }],
  });
  const seconds = (performance.now() - t0) / 1000;
  const it = await measure(stack.client, workflowIds.iteration(config.name, 0));
  const groups = [];
  for (let k = 0; k < tasks; k++) {
    groups.push(await measure(stack.client, workflowIds.group(config.name, 0, k)));
  }
  const episodes = [];
  const sample = Math.min(Number(values["episode-sample"]), tasks * groupSize);
  for (let i = 0; i < sample; i++) {
    const k = i % tasks;
    const g = Math.floor(i / tasks) % groupSize;
    episodes.push(await measure(stack.client, workflowIds.episode(config.name, 0, k, g)));
  }
  const all = [it, ...groups, ...episodes];
  const largest = all.reduce((a, b) => (b.events > a.events ? b : a));
  console.log(JSON.stringify({
    tasks,
    group_size: groupSize,
    episodes: result.recent[0]?.episodes ?? 0,
    seconds: Number(seconds.toFixed(1)),
    iteration_events: it.events,
    group_events_max: Math.max(...groups.map((g) => g.events)),
    episode_events_max: Math.max(...episodes.map((e) => e.events)),
    largest,
  }));
} finally {
  await stop();
  await stack.close();
  await temporal.release();
}
