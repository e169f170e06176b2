/**
 * The cm2 command line: `deno task cm2 <command>`.
 *
 *   config check FILE                   validate a run config, print it resolved (secrets redacted)
 *   data import PATH... --name NAME     import datasets into the store, with counts and precise errors
 *   data inspect NAME|FILE              summarise records, turns, steps, tools, checklist coverage
 *   data filter NAME --out NAME         CM2's rule-based filters, with counts per criterion
 *   run start [CONFIG]                  start a training run (prints its id and Web UI link)
 *   run list | status | watch | pause | resume | stop | set
 *   doctor [--config FILE]              check this machine and the services a run needs, with fixes
 *
 * @module
 */
import { Command, InvalidArgumentError } from "commander";
import cliProgress from "cli-progress";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from "@temporalio/client";
import { configSummary, redactedConfig } from "./core/config.ts";
import { FILTER_CRITERIA, type FilterCriterion, filterRecords } from "./core/filters.ts";
import { IMPORT_FORMATS, importFiles, type ImportFormat } from "./core/importers/mod.ts";
import { inspectDataset } from "./core/inspect.ts";
import type { TrajectoryRecord } from "./core/records.ts";
import { workflowIds } from "./core/sampling.ts";
import { ConfigError, connectClient, loadRunConfig, resolvePath, webUiUrl } from "./config.ts";
import { datasetRef, loadAllRecords, loadManifest, saveDataset } from "./store/datasets.ts";
import { FsStore } from "./store/fs_store.ts";
import { ORCHESTRATOR_QUEUE } from "./workflows/names.ts";
import { registerDoctorCommand } from "./cli/doctor.ts";
import { registerLabelCommands } from "./cli/label.ts";
import {
  iterationProgressQuery,
  pauseSignal,
  resumeSignal,
  type RunStatus,
  setHyperparametersUpdate,
  statusQuery,
  stopSignal,
  trainingRun,
} from "./workflows/training.ts";

function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

function storeFrom(opts: { store?: string }): FsStore {
  return new FsStore(resolvePath(opts.store ?? ".cm2/store"));
}

async function readText(p: string): Promise<string> {
  return await fs.readFile(p, "utf8");
}

/** Loads records from a store dataset name or a dataset file. */
async function loadRecords(
  store: FsStore,
  nameOrFile: string,
): Promise<{ name: string; records: TrajectoryRecord[] }> {
  const ref = await datasetRef(store, nameOrFile).catch(() => undefined);
  if (ref) return { name: nameOrFile, records: await loadAllRecords(store, await loadManifest(store, ref)) };
  try {
    await fs.stat(nameOrFile);
  } catch {
    fail(`No dataset named ${JSON.stringify(nameOrFile)} in ${store.root} and no such file`);
  }
  const report = await importFiles([nameOrFile], readText);
  for (const e of report.errors) printImportError(e);
  return { name: path.basename(nameOrFile), records: report.records };
}

function printImportError(
  e: {
    file: string;
    record: { index?: number; id?: string; line?: number };
    path: string;
    message: string;
    value?: unknown;
  },
): void {
  const rec = [
    e.record.index !== undefined ? `record ${e.record.index}` : "",
    e.record.id ? `(${e.record.id})` : "",
    e.record.line !== undefined ? `line ${e.record.line}` : "",
  ].filter(Boolean).join(" ");
  const value = e.value === undefined ? "" : `; found ${JSON.stringify(e.value)}`;
  console.error(`  ${e.file}${rec ? `: ${rec}` : ""}: ${e.path}: ${e.message}${value}`);
}

const program = new Command();
program.name("cm2").description("CM2 checklist-reward RL for tool-using agents, on Temporal")
  .showHelpAfterError();

// ----- config -----
const config = program.command("config").description("run configuration");
config.command("check").argument("<file>", "run config (JSON)").description(
  "validate a config; print it resolved with secrets redacted, or every error with its path and value",
).action(async (file: string) => {
  try {
    const cfg = await loadRunConfig(file);
    console.log(JSON.stringify(redactedConfig(cfg, (n) => Deno.env.get(n)), null, 2));
    console.error(`ok: ${configSummary(cfg)}`);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
});

// ----- data -----
const data = program.command("data").description("datasets: import, inspect, filter");
data.command("import")
  .argument("<paths...>", "files to import (CM2 JSON/JSONL, OpenAI chat JSONL, ToolTalk, τ-bench)")
  .requiredOption("--name <name>", "dataset name in the store")
  .option("--format <format>", `force a format: ${IMPORT_FORMATS.join(", ")}`)
  .option("--store <dir>", "store root", ".cm2/store")
  .description("import records into the store as a normalised dataset with a manifest")
  .action(async (paths: string[], opts: { name: string; format?: string; store: string }) => {
    if (opts.format && !IMPORT_FORMATS.includes(opts.format as ImportFormat)) {
      fail(`Unknown format ${JSON.stringify(opts.format)}; use one of ${IMPORT_FORMATS.join(", ")}`);
    }
    const files: string[] = [];
    for (const p of paths) {
      const st = await fs.stat(p).catch(() => fail(`No such file or directory: ${p}`));
      if (st.isDirectory()) {
        for (const e of (await fs.readdir(p)).sort()) {
          if (/\.(json|jsonl)$/.test(e)) files.push(path.join(p, e));
        }
      } else files.push(p);
    }
    const report = await importFiles(
      files,
      readText,
      opts.format ? { format: opts.format as ImportFormat } : {},
    );
    const store = storeFrom(opts);
    const { ref } = await saveDataset(store, opts.name, report.records, {
      sources: report.files.map((f) => ({
        file: f.file,
        format: f.format ?? "unknown",
        imported: f.imported,
        errors: f.errored + (f.failed ? 1 : 0),
      })),
      derivedFrom: { step: "import", parent: null },
    });
    const byFormat = new Map<string, number>();
    for (const f of report.files) {
      byFormat.set(f.format ?? "unknown", (byFormat.get(f.format ?? "unknown") ?? 0) + f.imported);
    }
    if (report.errors.length > 0) {
      console.error(`${report.errors.length} record(s) not imported:`);
      for (const e of report.errors) printImportError(e);
    }
    console.log(
      `imported ${report.records.length} records from ${files.length} file(s) ` +
        `(${[...byFormat].map(([f, n]) => `${f}: ${n}`).join(", ")}), ${report.errors.length} error(s)`,
    );
    console.log(`dataset ${opts.name} → ${ref.uri} (${store.root})`);
  });

data.command("inspect")
  .argument("<dataset>", "dataset name in the store, or a file")
  .option("--store <dir>", "store root", ".cm2/store")
  .option("--json", "print JSON")
  .description("summarise records, turns, steps, tools and checklist coverage")
  .action(async (name: string, opts: { store: string; json?: boolean }) => {
    const { name: label, records } = await loadRecords(storeFrom(opts), name);
    const summary = inspectDataset(records);
    if (opts.json) console.log(JSON.stringify(summary, null, 2));
    else {
      console.log(`dataset ${label}`);
      printSummary(summary as unknown as Record<string, unknown>, "  ");
    }
  });

function printSummary(obj: Record<string, unknown>, indent: string): void {
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      console.log(`${indent}${k}:`);
      printSummary(v as Record<string, unknown>, indent + "  ");
    } else {console.log(
        `${indent}${k}: ${Array.isArray(v) ? v.join(", ") : typeof v === "number" ? round(v) : v}`,
      );}
  }
}

function round(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(3);
}

data.command("filter")
  .argument("<dataset>", "dataset name in the store, or a file")
  .option("--out <name>", "store the kept records as this dataset")
  .option("--disable <criteria>", `comma-separated criteria to skip (of ${FILTER_CRITERIA.join(", ")})`)
  .option("--store <dir>", "store root", ".cm2/store")
  .description("apply CM2's seven rule-based filters; print counts per criterion")
  .action(async (name: string, opts: { out?: string; disable?: string; store: string }) => {
    const store = storeFrom(opts);
    const { records } = await loadRecords(store, name);
    const disabled = (opts.disable ?? "").split(",").map((s) => s.trim()).filter(Boolean);
    for (const d of disabled) {
      if (!FILTER_CRITERIA.includes(d as FilterCriterion)) fail(`Unknown criterion ${JSON.stringify(d)}`);
    }
    const enabled = FILTER_CRITERIA.filter((c) => !disabled.includes(c));
    const result = filterRecords(records, { criteria: enabled });
    console.log(`kept ${result.kept.length} of ${records.length} records`);
    for (const c of FILTER_CRITERIA) {
      const n = result.counts[c];
      console.log(`  ${c.padEnd(28)} ${enabled.includes(c) ? `${n} rejected` : "skipped"}`);
    }
    if (opts.out) {
      const parent = await datasetRef(store, name);
      const { ref } = await saveDataset(store, opts.out, result.kept, {
        sources: [{
          file: name,
          format: "dataset",
          imported: result.kept.length,
          errors: records.length - result.kept.length,
        }],
        derivedFrom: { step: `filter:${enabled.join("+")}`, parent: parent ?? null },
      });
      console.log(`dataset ${opts.out} → ${ref.uri}`);
    }
  });

// ----- run -----
const run = program.command("run").description("training runs on Temporal");

async function withClient<T>(fn: (c: Awaited<ReturnType<typeof connectClient>>) => Promise<T>): Promise<T> {
  let conn;
  try {
    conn = await connectClient();
  } catch (err) {
    fail(
      `Cannot reach Temporal at ${Deno.env.get("TEMPORAL_ADDRESS") ?? "127.0.0.1:7233"}: ${
        (err as Error).message
      }. ` +
        "Start it with `deno task dev`, or set TEMPORAL_ADDRESS",
    );
  }
  try {
    return await fn(conn);
  } finally {
    await conn.connection.close();
  }
}

function runLink(id: string): string {
  return `${webUiUrl()}/namespaces/default/workflows/${encodeURIComponent(id)}`;
}

run.command("start")
  .argument("[config]", "run config (JSON); defaults to the embedded demo")
  .option("--task-queue <queue>", "orchestrator task queue", ORCHESTRATOR_QUEUE)
  .option("--wait", "wait for the run to finish and print its result")
  .description("start a training run; prints the run id and the Web UI link")
  .action(async (file: string | undefined, opts: { taskQueue: string; wait?: boolean }) => {
    let cfg;
    try {
      cfg = await loadRunConfig(file);
    } catch (err) {
      if (err instanceof ConfigError) fail(err.message);
      throw err;
    }
    await withClient(async ({ client }) => {
      const id = workflowIds.run(cfg.name);
      try {
        const handle = await client.workflow.start(trainingRun, {
          taskQueue: opts.taskQueue,
          workflowId: id,
          args: [{ config: cfg }],
          memo: { config: configSummary(cfg) },
          searchAttributes: { Cm2RunName: [cfg.name], Cm2Iteration: [0], Cm2Status: ["running"] },
        });
        console.log(`started ${id}`);
        console.log(`Web UI: ${runLink(id)}`);
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

function runId(name: string): string {
  return name.startsWith("run/") ? name : workflowIds.run(name);
}

async function status(name: string): Promise<RunStatus> {
  return await withClient(async ({ client }) => {
    try {
      return await client.workflow.getHandle(runId(name)).query(statusQuery);
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) fail(`No run ${runId(name)}`);
      throw err;
    }
  });
}

function formatSummary(s: RunStatus["recent"][number]): string {
  return `it ${s.iteration}${s.validation ? " (val)" : ""}: reward ${s.meanReward.toFixed(3)}, pass ${
    (100 * s.itemPassRate).toFixed(1)
  }%, failed ${s.failed}/${s.episodes}, judge ${s.judgeCalls}, sim ${s.simulatorCalls}, loss ${
    s.updateLoss === null ? "-" : s.updateLoss.toFixed(4)
  }, ${s.seconds.toFixed(1)} s`;
}

run.command("status").argument("<name>", "run name or id").description("show a run's state").action(
  async (name: string) => {
    const s = await status(name);
    console.log(
      `${runId(name)}: ${s.phase}, iteration ${s.iteration}/${s.iterations}, policy v${s.policyVersion}`,
    );
    for (const r of s.recent) console.log(`  ${formatSummary(r)}`);
    console.log(`Web UI: ${runLink(runId(name))}`);
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
        const s = await handle.query(statusQuery).catch(() => undefined);
        if (!s) break;
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

function positiveNumber(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError(`expected a non-negative number, got ${v}`);
  }
  return n;
}

run.command("set").argument("<name>", "run name or id")
  .option("--lr <x>", "learning rate", positiveNumber)
  .option("--kl-coef <x>", "KL coefficient", positiveNumber)
  .option("--group-size <n>", "episodes per task", positiveNumber)
  .option("--tasks-per-iteration <n>", "tasks per iteration", positiveNumber)
  .option("--iterations <n>", "total iterations", positiveNumber)
  .option("--episode-concurrency <n>", "episodes in flight", positiveNumber)
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

registerLabelCommands(program);
registerDoctorCommand(program);

if (import.meta.main) {
  await program.parseAsync(["deno", "cm2", ...Deno.args]);
}
