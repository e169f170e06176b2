/**
 * History shape: no Temporal history grows with tasks × G. An iteration starts one child per task (a task
 * group), a group one child per episode, and an episode continues as new past `cm2.episodeHistoryEvents`.
 * Measured at a small scale here (2 tasks × G = 3) and bounded at the paper's recipe (128 tasks × G = 48) by
 * scaling a whole history with its number of children (an upper bound: the fixed part scales too), which must
 * stay under Temporal's 10,240-event warning. `deno task bench:shape` measures the real 128 × 48.
 */
import assert from "node:assert/strict";
import type { Client } from "@temporalio/client";
import { workflowIds } from "../../core/names.ts";
import { trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { scriptedConfig, trainingStack } from "../harness/training.ts";

const WARN_EVENTS = 10_240;
const opts = { sanitizeOps: false, sanitizeResources: false };

/** Events of a workflow's latest run, and how many of them belong to its child workflows. */
async function shape(
  client: Client,
  id: string,
): Promise<{ events: number; childEvents: number; children: number }> {
  const history = await client.workflow.getHandle(id).fetchHistory();
  let childEvents = 0;
  let children = 0;
  for (const e of history.events ?? []) {
    const keys = Object.keys(e).filter((k) =>
      k.endsWith("EventAttributes") && (e as Record<string, unknown>)[k]
    );
    if (keys.some((k) => /ChildWorkflow/i.test(k))) childEvents++;
    if (keys.includes("startChildWorkflowExecutionInitiatedEventAttributes")) children++;
  }
  return { events: history.events?.length ?? 0, childEvents, children };
}

/** The runs of a workflow id (a continued workflow has several), from visibility. */
async function runsOf(client: Client, id: string): Promise<string[]> {
  for (let i = 0; i < 50; i++) {
    const statuses: string[] = [];
    for await (const w of client.workflow.list({ query: `WorkflowId="${id}"` })) statuses.push(w.status.name);
    if (statuses.length && !statuses.includes("RUNNING")) return statuses;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`visibility did not settle for ${id}`);
}

async function runIteration(cm2: Record<string, unknown>, name: string) {
  const temporal = await useTemporal();
  const stack = await trainingStack(temporal.address);
  const stop = await stack.startWorkers();
  const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
    iterations: 1,
    tasksPerIteration: 2,
    groupSize: 3,
    episodeConcurrency: 6,
    ...cm2,
  }, `${name}-${crypto.randomUUID().slice(0, 6)}`);
  const result = await stack.client.workflow.execute(trainingRun, {
    taskQueue: stack.taskQueue,
    workflowId: workflowIds.run(config.name),
    args: [{ config }],
  });
  return { temporal, stack, stop, config, result };
}

Deno.test({
  name:
    "an iteration holds one child per task, a group one per episode; 128 × 48 projects under 10,240 events",
  ...opts,
  fn: async () => {
    const { temporal, stack, stop, config, result } = await runIteration({}, "shape");
    try {
      assert.equal(result.recent[0]!.episodes, 6);
      const it = await shape(stack.client, workflowIds.iteration(config.name, 0));
      assert.equal(it.children, 2, "one child per task, not per episode");
      const groups = [0, 1].map((k) => workflowIds.group(config.name, 0, k));
      const g = await shape(stack.client, groups[0]!);
      assert.equal(g.children, 3, "one child per episode of the group");
      let episodeMax = 0;
      for (let k = 0; k < 2; k++) {
        for (let e = 0; e < 3; e++) {
          episodeMax = Math.max(
            episodeMax,
            (await shape(stack.client, workflowIds.episode(config.name, 0, k, e))).events,
          );
        }
      }
      // Upper bound: every event of the history scales with its children (child events, and the workflow
      // tasks each child's completion wakes). Measured at 128 × 48 (bench:shape): 1,183 and 248 events.
      const project = (s: { events: number; children: number }, n: number) => (s.events / s.children) * n;
      const iteration128 = project(it, 128);
      const group48 = project(g, 48);
      console.log(JSON.stringify({
        iteration_events: it.events,
        group_events: g.events,
        episode_events_max: episodeMax,
        iteration_events_at_128_tasks_at_most: Math.round(iteration128),
        group_events_at_G48_at_most: Math.round(group48),
      }));
      assert.ok(iteration128 < WARN_EVENTS, `iteration at 128 tasks: ${iteration128} events`);
      assert.ok(group48 < WARN_EVENTS, `group at G=48: ${group48} events`);
      assert.ok(episodeMax < WARN_EVENTS);
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});

Deno.test({
  name: "an episode past its history budget continues as new and ends as it would have",
  ...opts,
  fn: async () => {
    const plain = await runIteration({}, "plain");
    const plainSummary = plain.result.recent[0]!;
    await plain.stop();
    await plain.stack.close();
    await plain.temporal.release();
    const { temporal, stack, stop, config, result } = await runIteration({ episodeHistoryEvents: 10 }, "can");
    try {
      const s = result.recent[0]!;
      assert.equal(s.episodes, 6);
      assert.equal(s.failed, 0);
      // the same scripted episodes, judged the same way, whatever the number of runs they took
      assert.equal(s.meanReward, plainSummary.meanReward);
      assert.equal(s.judgeCalls, plainSummary.judgeCalls);
      assert.equal(s.itemPassRate, plainSummary.itemPassRate);
      const runs = await runsOf(stack.client, workflowIds.episode(config.name, 0, 0, 0));
      assert.ok(runs.length >= 2, `continued as new: ${runs.join(", ")}`);
      assert.ok(runs.includes("CONTINUED_AS_NEW"));
      const last = await shape(stack.client, workflowIds.episode(config.name, 0, 0, 0));
      assert.ok(last.events < 60, `the latest run's history starts over (${last.events} events)`);
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});
