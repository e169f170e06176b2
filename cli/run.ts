/**
 * `cm2 run start | list | status | watch | pause | resume | stop | set`: training runs on Temporal.
 * {@linkcode startRun} is the one way a run is started (`scripts/start.ts` uses it too).
 *
 * @module
 */
import { type Client, WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from "@temporalio/client";
import cliProgress from "cli-progress";
import type { Command } from "commander";
import { configSummary, type RunConfig } from "../core/config.ts";
import { workflowIds } from "../core/names.ts";
import { describeDataset } from "../activities/dataset.ts";
import { ORCHESTRATOR_QUEUE } from "../core/names.ts";
import {
  iterationProgressQuery,
  type IterationSummary,
  pauseSignal,
  resumeSignal,
  type RunStatus,
  setHyperparametersUpdate,
  statusQuery,
  stopSignal,
  trainingRun,
  type TrainingRunResult,
} from "../workflows/training.ts";
import { configOrFail, fail, nonNegative, withClient, workflowLink } from "./common.ts";

/**
 * Starts the training run of `config` (workflow `run/<name>`) with its memo and search attributes; throws
 * `WorkflowExecutionAlreadyStartedError` when a run of that name is running.
 */
export async function startRun(client: Client, config: RunConfig, taskQueue = config.temporal.taskQueue) {
  return await client.workflow.start(trainingRun, {
    taskQueue,
    workflowId: workflowIds.run(config.name),
    args: [{ config }],
    memo: { config: configSummary(config) },
    searchAttributes: { Cm2RunName: [config.name], Cm2Iteration: [0], Cm2Status: ["running"] },
  });
}

function runId(name: string): string {
  return name.startsWith("run/") ? name : workflowIds.run(name);
}

/**
 * A run's state without needing a worker where none is needed: a closed run's from its result (or its close
 * status), a running run's from its status query. A running run that no worker serves fails in one line that
 * says which task queue needs one.
 */
async function runState(client: Client, name: string): Promise<RunStatus | { closed: string }> {
  const handle = client.workflow.getHandle(runId(name));
  let desc;
  try {
    desc = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) fail(`No run ${runId(name)}`);
    throw err;
  }
  if (desc.status.name === "COMPLETED") {
    const r: TrainingRunResult = await handle.result();
    return {
      name: r.name,
      phase: r.stopped ? "stopped" : "completed",
      iteration: r.iterations,
      iterations: r.iterations,
      policyVersion: r.policyVersion,
      checkpoint: r.checkpoint,
      recent: r.recent,
    };
  }
  if (desc.status.name !== "RUNNING") return { closed: desc.status.name.toLowerCase() };
  const noWorker = () =>
    fail(
      `${runId(name)} is running, but no worker is polling ${desc.taskQueue}; start one with ` +
        "`deno task worker` (the same --store as the run)",
    );
  const queue = await client.workflowService.describeTaskQueue({
    namespace: client.options.namespace,
    taskQueue: { name: desc.taskQueue },
    taskQueueType: 1, // TASK_QUEUE_TYPE_WORKFLOW
  });
  if ((queue.pollers ?? []).length === 0) noWorker();
  try {
    return await handle.query(statusQuery);
  } catch (err) {
    const text = `${(err as Error).message} ${((err as Error).cause as Error | undefined)?.message ?? ""}`;
    if (/no poller|deadline|timeout/i.test(text)) noWorker();
    throw err;
  }
}

async function status(name: string): Promise<RunStatus | { closed: string }> {
  return await withClient(async ({ client }) => await runState(client, name));
}

/** One line per iteration, as `cm2 run status` and `task start` print it. */
export function formatSummary(s: IterationSummary): string {
  const tis = s.rolloutCorrection
    ? `, TIS w ${s.rolloutCorrection.meanWeight.toFixed(3)} vetoed ${
      (100 * s.rolloutCorrection.vetoedShare).toFixed(1)
    }%`
    : "";
  return `it ${s.iteration}${s.validation ? " (val)" : ""}: reward ${s.meanReward.toFixed(3)}, pass ${
    (100 * s.itemPassRate).toFixed(1)
  }%, failed ${s.failed}/${s.episodes}, judge ${s.judgeCalls}${
    s.checkedVerdicts ? ` (+${s.checkedVerdicts} checked)` : ""
  }, sim ${s.simulatorCalls} (+${s.replayHits} replayed), loss ${
    s.updateLoss === null ? "-" : s.updateLoss.toFixed(4)
  }${tis}, policy v${s.policyVersion}, ${s.seconds.toFixed(1)} s${
    (s.evals ?? []).map((e) =>
      `\n    eval ${e.bench}/${e.category}: ${(100 * e.score).toFixed(1)}% [${
        (100 * e.ci95[0]).toFixed(1)
      }, ${(100 * e.ci95[1]).toFixed(1)}] over ${e.tasks} tasks`
    ).join("")
  }`;
}

/**
 * Registers `cm2 run`: nine sub-commands, each a few lines of option declarations and a call; long as a
 * whole because commander's declarations are.
 */
export function registerRunCommands(program: Command): void {
  const run = program.command("run").description("training runs on Temporal");

  run.command("start")
    .argument("[config]", "run config (JSON); defaults to the embedded demo")
    .option("--task-queue <queue>", "orchestrator task queue", ORCHESTRATOR_QUEUE)
    .option("--wait", "wait for the run to finish and print its result")
    .description("start a training run; prints the run id and the Web UI link")
    .action(async (file: string | undefined, opts: { taskQueue: string; wait?: boolean }) => {
      const cfg = await configOrFail(file);
      await withClient(async ({ client }) => {
        const id = workflowIds.run(cfg.name);
        try {
          const handle = await startRun(client, cfg, opts.taskQueue);
          console.log(`started ${id}`);
          console.log(`Web UI: ${workflowLink(id)}`);
          if (opts.wait) console.log(JSON.stringify(await handle.result(), null, 2));
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError) {
            fail(`Run ${id} is already running; pick another \`name\` in the config or stop it first`);
          }
          throw err;
        }
      });
    });

  run.command("list").description("list cm2 runs").action(async () => {
    await withClient(async ({ client }) => {
      let n = 0;
      for await (const wf of client.workflow.list({ query: "WorkflowType = 'trainingRun'" })) {
        const sa = wf.searchAttributes as Record<string, unknown[] | undefined>;
        console.log(
          `${wf.workflowId.padEnd(28)} ${wf.status.name.padEnd(12)} it=${sa.Cm2Iteration?.[0] ?? 0} ` +
            `reward=${
              typeof sa.Cm2MeanReward?.[0] === "number" ? (sa.Cm2MeanReward[0] as number).toFixed(3) : "-"
            } ` +
            `started ${wf.startTime.toISOString()}`,
        );
        if (++n >= 50) break;
      }
      if (n === 0) console.log("no runs");
    });
  });

  run.command("status").argument("<name>", "run name or id").description("show a run's state").action(
    async (name: string) => {
      const s = await status(name);
      if ("closed" in s) {
        console.log(`${runId(name)}: ${s.closed}`);
        console.log(`Web UI: ${workflowLink(runId(name))}`);
        return;
      }
      console.log(
        `${runId(name)}: ${s.phase}, iteration ${s.iteration}/${s.iterations}, policy v${s.policyVersion}`,
      );
      if (s.dataset) console.log(`  dataset: ${describeDataset(s.dataset)}`);
      for (const r of s.recent) console.log(`  ${formatSummary(r)}`);
      console.log(`Web UI: ${workflowLink(runId(name))}`);
    },
  );

  run.command("watch").argument("<name>", "run name or id").option("--interval <ms>", "poll interval", "1000")
    .description("live progress: iteration, episodes done / total, mean reward, judge calls, failures")
    .action(async (name: string, opts: { interval: string }) => {
      await withClient(async ({ client }) => {
        const handle = client.workflow.getHandle(runId(name));
        const bar = new cliProgress.SingleBar({
          format:
            "it {iteration} [{bar}] {value}/{total} episodes | {phase} | failed {failed} | last reward {reward}",
          hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        let started = false;
        let printed = 0;
        while (true) {
          const s = await runState(client, name);
          if ("closed" in s) break;
          while (printed < s.recent.length) {
            if (started) bar.stop();
            started = false;
            console.log(formatSummary(s.recent[printed++]!));
          }
          if (s.phase === "completed" || s.phase === "stopped") break;
          const p = await client.workflow.getHandle(workflowIds.iteration(s.name, s.iteration)).query(
            iterationProgressQuery,
          ).catch(() => undefined);
          const payload = {
            iteration: s.iteration,
            phase: p?.phase ?? s.phase,
            failed: p?.failed ?? 0,
            reward: s.recent.at(-1)?.meanReward.toFixed(3) ?? "-",
          };
          if (p) {
            if (!started) bar.start(p.episodesTotal, p.episodesDone, payload);
            started = true;
            bar.setTotal(p.episodesTotal);
            bar.update(p.episodesDone, payload);
          }
          await new Promise((r) => setTimeout(r, Number(opts.interval)));
        }
        if (started) bar.stop();
        const desc = await handle.describe();
        console.log(`${runId(name)}: ${desc.status.name}`);
      });
    });

  for (
    const [verb, signal, text] of [
      ["pause", pauseSignal, "pause before the next iteration"],
      ["resume", resumeSignal, "resume a paused run"],
      ["stop", stopSignal, "stop after the current iteration finishes"],
    ] as const
  ) {
    run.command(verb).argument("<name>", "run name or id").description(text).action(async (name: string) => {
      await withClient(async ({ client }) => {
        try {
          await client.workflow.getHandle(runId(name)).signal(signal);
        } catch (err) {
          if (err instanceof WorkflowNotFoundError) fail(`No running run ${runId(name)}`);
          throw err;
        }
        console.log(`${verb}: sent to ${runId(name)}`);
      });
    });
  }

  run.command("set").argument("<name>", "run name or id")
    .option("--lr <x>", "learning rate", nonNegative)
    .option("--kl-coef <x>", "KL coefficient", nonNegative)
    .option("--group-size <n>", "episodes per task", nonNegative)
    .option("--tasks-per-iteration <n>", "tasks per iteration", nonNegative)
    .option("--iterations <n>", "total iterations", nonNegative)
    .option("--episode-concurrency <n>", "episodes in flight", nonNegative)
    .description("change safe hyperparameters; they apply from the next iteration")
    .action(async (name: string, o: Record<string, number | undefined>) => {
      const h = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
      if (Object.keys(h).length === 0) fail("Nothing to change: pass at least one option");
      await withClient(async ({ client }) => {
        const result = await client.workflow.getHandle(runId(name)).executeUpdate(setHyperparametersUpdate, {
          args: [h],
        });
        console.log(`updated ${runId(name)}: ${JSON.stringify(result)}`);
      });
    });
}
