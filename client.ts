/**
 * The cm2 command line: `deno task cm2 <command>`.
 *
 *   config check FILE                   validate a run config, print it resolved (secrets redacted)
 *   data import PATH... --name NAME     import datasets into the store, with counts and precise errors
 *   data inspect NAME|FILE              summarise records, turns, steps, tools, checklist coverage
 *   data filter NAME --out NAME         CM2's rule-based filters, with counts per criterion
 *   run start [CONFIG]                  start a training run (prints its id and Web UI link)
 *   run list | status | watch | pause | resume | stop | set
 *   label DATASET                       label records with checklists (labeling workflow)
 *   store gc [--dry-run]                collect intermediate episode states of finished iterations
 *   doctor [--config FILE]              check this machine and the services a run needs, with fixes
 *   ui [--port N]                       the run viewer: runs, curves, iterations, episodes and checklists
 *   report RUN --out FILE               one run's views as a single offline HTML file
 *
 * Each command group is registered from its own file under `cli/` (`config`, `data`, `run`, `label`,
 * `store`, `doctor`, `ui`); the Temporal connection comes from `config.ts` (`connectClient`), used through
 * `cli/common.ts`'s `withClient`.
 *
 * @module
 */
import { Command } from "commander";
import { ConfigError } from "./config.ts";
import { DatasetError } from "./store/datasets.ts";
import { StoreError } from "./store/mod.ts";
import { registerConfigCommands } from "./cli/config.ts";
import { registerDataCommands } from "./cli/data.ts";
import { registerDoctorCommand } from "./cli/doctor.ts";
import { registerEvalCommands } from "./cli/eval.ts";
import { registerLabelCommands } from "./cli/label.ts";
import { registerRunCommands } from "./cli/run.ts";
import { registerSftCommands } from "./cli/sft.ts";
import { registerPipelineCommands } from "./cli/pipeline.ts";
import { registerStoreCommands } from "./cli/store.ts";
import { registerUiCommands } from "./cli/ui.ts";

/** The whole command line: each group lives in its own file under `cli/`. */
export function buildProgram(): Command {
  const program = new Command();
  program.name("cm2").description("CM2 checklist-reward RL for tool-using agents, on Temporal")
    .showHelpAfterError();
  registerConfigCommands(program);
  registerDataCommands(program);
  registerRunCommands(program);
  registerLabelCommands(program);
  registerSftCommands(program);
  registerPipelineCommands(program);
  registerStoreCommands(program);
  registerDoctorCommand(program);
  registerUiCommands(program);
  registerEvalCommands(program);
  return program;
}

/**
 * Expected failures end in one line and exit 2: a store or dataset that refuses the operation, a config that
 * does not validate. Anything else is a bug and keeps its stack trace.
 */
export async function main(args: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(["deno", "cm2", ...args]);
    // Every command is finite: do not wait on handles a library may keep open (a finished `run watch` hung).
    Deno.exit(Deno.exitCode);
  } catch (err) {
    if (err instanceof StoreError || err instanceof DatasetError || err instanceof ConfigError) {
      console.error(`error: ${err.message}`);
      Deno.exit(2);
    }
    throw err;
  }
}

if (import.meta.main) await main(Deno.args);
