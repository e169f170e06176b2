/**
 * `cm2 pipeline <recipe.json>`: starts (or attaches to) the durable pipeline `pipeline/<name>` and prints each
 * stage as it finishes; `--detach` returns at once. A re-run of a finished or failed pipeline skips the stages
 * it already finished.
 *
 * @module
 */
import type { Client, WorkflowHandle } from "@temporalio/client";
import type { Command } from "commander";
import type { StageResult } from "../activities/pipeline.ts";
import { workflowIds } from "../core/names.ts";
import type { RunConfig } from "../core/config.ts";
import { cotCompressStage } from "../core/cot_compress.ts";
import { LABEL_PROMPT_VERSION } from "../core/label_check.ts";
import { parsePipelineRecipe, type PipelineRecipe } from "../core/pipeline.ts";
import { qualityFilterStage } from "../core/quality_filter.ts";
import {
  type PipelineInput,
  pipelineRun,
  type PipelineStatus,
  pipelineStatusQuery,
} from "../workflows/pipeline.ts";
import { configOrFail, fail, readText, startOrAttach, withClient } from "./common.ts";

/** The prompt versions of a recipe's LLM stages, fixed at start. */
export function promptVersionsOf(recipe: PipelineRecipe, config: RunConfig): PipelineInput["promptVersions"] {
  const compress = recipe.stages.find((s) => s.stage === "compress-cot");
  const target = compress?.stage === "compress-cot" ? compress.target : undefined;
  return {
    label: LABEL_PROMPT_VERSION,
    "filter-llm": qualityFilterStage.promptVersion({}),
    "compress-cot": cotCompressStage.promptVersion({ target: target ?? config.stages.compressTarget }),
  };
}

/** One line per finished stage. */
function stageLine(status: PipelineStatus, k: number): string {
  const s = status.stages[k]!;
  return `[${k + 1}/${status.stages.length}] ${s.stage}: ${s.result?.summary ?? s.status}${
    s.result?.dataset ? ` → ${s.result.dataset}` : ""
  }`;
}

/**
 * Prints a line per stage as the pipeline finishes it (those finished when it ended too) and returns the
 * results; throws the pipeline's failure.
 */
export async function watchPipeline(
  client: Client,
  handle: WorkflowHandle<typeof pipelineRun>,
  print: (line: string) => void,
): Promise<StageResult[]> {
  let printed = 0;
  let ended = false;
  const done = handle.result();
  done.finally(() => (ended = true)).catch(() => {});
  while (!ended) {
    const s = await client.connection.withDeadline(
      Date.now() + 2_000,
      () => handle.query(pipelineStatusQuery),
    )
      .catch(() => undefined);
    while (s && printed < s.stages.length && s.stages[printed]!.status === "done") {
      print(stageLine(s, printed++));
    }
    let tick: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([done.catch(() => {}), new Promise((r) => (tick = setTimeout(r, 1000)))]);
    clearTimeout(tick);
  }
  const results = await done;
  for (; printed < results.length; printed++) {
    const r = results[printed]!;
    print(`[${printed + 1}/${results.length}] ${r.stage}: ${r.summary}${r.dataset ? ` → ${r.dataset}` : ""}`);
  }
  return results;
}

/** Registers `cm2 pipeline`. */
export function registerPipelineCommands(program: Command): void {
  program.command("pipeline")
    .argument("<recipe>", "pipeline recipe (JSON): name, input, config, stages")
    .option("--detach", "start it and return without watching")
    .description(
      "run CM2's stages (filter, split, label, sft, rl) in order as one durable workflow pipeline/<name>, " +
        "each stage's output feeding the next; finished stages are skipped on a re-run",
    )
    .action(async (file: string, opts: { detach?: boolean }) => {
      let raw: unknown;
      try {
        raw = JSON.parse(await readText(file));
      } catch (err) {
        fail(`${file}: ${(err as Error).message}`);
      }
      const parsed = parsePipelineRecipe(raw);
      if (!parsed.ok) fail(`${file} is not a valid recipe:\n  ${parsed.issues.join("\n  ")}`);
      const recipe = parsed.recipe;
      const config = await configOrFail(recipe.config);
      const id = workflowIds.pipeline(recipe.name);
      await withClient(async ({ client }) => {
        const handle = await startOrAttach(client, id, () =>
          client.workflow.start(pipelineRun, {
            taskQueue: config.temporal.taskQueue,
            workflowId: id,
            args: [{ recipe, config, promptVersions: promptVersionsOf(recipe, config) }],
          }));
        if (opts.detach) return;
        try {
          await watchPipeline(client, handle, (line) => console.log(line));
        } catch (err) {
          const cause = (err as { cause?: Error }).cause;
          fail(`pipeline ${id} failed: ${cause?.message ?? (err as Error).message}`);
        }
        console.log(`pipeline ${recipe.name} done`);
      });
    });
}
