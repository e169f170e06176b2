/**
 * Activities of the pipeline workflow (`workflows/pipeline.ts`): the dataset steps that need no model (import,
 * rule filter, split) and the stage records that make a pipeline resumable across executions. Each stage's
 * result is kept under the first-writer-wins pointer `pipelines/<name>/stage-<k>-<stage>`, read before the
 * stage runs, so a retried activity or a re-run pipeline never repeats a finished stage.
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { importFiles } from "../core/importers/mod.ts";
import type { PipelineStage } from "../core/pipeline.ts";
import { resolveSplitRules } from "../core/split.ts";
import { saveDataset } from "../store/datasets.ts";
import { loadDataset, ruleCriteria, ruleFilterStep, splitStep } from "../store/dataset_steps.ts";
import type { CachedStore } from "../store/cached.ts";
import type { ArtifactStore } from "../store/mod.ts";

/** What one finished stage produced (stored, and shown by the pipeline's status query). */
export interface StageResult {
  stage: PipelineStage["stage"] | "import";
  /** The dataset the next stage reads (`datasets/<name>`), when the stage writes one. */
  dataset?: string;
  /** Split outputs. */
  split?: { sft: string | null; rl: string | null; heldOut: string | null; heldOutCount: number };
  /** The stage's counts, one line. */
  summary: string;
}

/** The pointer name of stage `index` of pipeline `name`. */
export function stageName(name: string, index: number, stage: string): string {
  return `pipelines/${name}/stage-${index}-${stage}`;
}

/** Input of {@linkcode createPipelineActivities}' `pipelineStep`. */
export interface PipelineStepInput {
  pipeline: string;
  index: number;
  /** A dataset-only stage (import, filter, split). */
  stage: { stage: "import" } | Extract<PipelineStage, { stage: "filter" | "split" }>;
  /** What the stage reads: a file (import) or `datasets/<name>`. */
  source: string;
}

/** Builds the pipeline activities over the store; `root` resolves relative input files. */
export function createPipelineActivities(deps: { store: ArtifactStore; cached: CachedStore; root: string }) {
  const { store, cached } = deps;
  const invalid = (message: string) => ApplicationFailure.nonRetryable(message, "InvalidInput");

  async function run(input: PipelineStepInput): Promise<StageResult> {
    const { pipeline: name, stage } = input;
    if (stage.stage === "import") {
      const file = path.isAbsolute(input.source) ? input.source : path.join(deps.root, input.source);
      const report = await importFiles([file], (p) => fs.readFile(p, "utf8"));
      if (report.records.length === 0) {
        throw invalid(
          `Pipeline ${name}: nothing imported from ${input.source} (${report.errors.length} errors)`,
        );
      }
      const out = `${name}-raw`;
      await saveDataset(store, out, report.records, {
        sources: report.files.map((f) => ({
          file: f.file,
          format: f.format ?? "unknown",
          imported: f.imported,
          errors: f.errored,
        })),
        derivedFrom: { step: "import", parent: null },
      });
      return {
        stage: "import",
        dataset: `datasets/${out}`,
        summary: `imported ${report.records.length} records, ${report.errors.length} errors`,
      };
    }
    const source = input.source.slice("datasets/".length);
    const { records, ref } = await loadDataset(store, source).catch((err) => {
      throw invalid(`Pipeline ${name}: ${(err as Error).message}`);
    });
    if (stage.stage === "filter") {
      let enabled;
      try {
        ({ enabled } = ruleCriteria(records, stage.disable, stage.enable));
      } catch (err) {
        throw invalid(`Pipeline ${name}: filter: ${(err as Error).message}`);
      }
      const out = `${name}-filtered`;
      const { result } = await ruleFilterStep(store, {
        source,
        records,
        parent: ref,
        enabled,
        out,
        allowEmpty: true,
      });
      if (result.kept.length === 0) throw invalid(`Pipeline ${name}: the rule filter rejected every record`);
      return {
        stage: "filter",
        dataset: `datasets/${out}`,
        summary: `kept ${result.kept.length} of ${records.length} records`,
      };
    }
    const { stage: _s, ...rules } = stage;
    const { report } = await splitStep(store, {
      source,
      records,
      parent: ref,
      versionKey: ref.sha256,
      rules: resolveSplitRules(rules),
      out: name,
    });
    const c = report.counts;
    return {
      stage: "split",
      split: {
        sft: report.datasets.sft?.name ?? null,
        rl: report.datasets.rl?.name ?? null,
        heldOut: report.datasets.heldOut?.name ?? null,
        heldOutCount: c.heldOut,
      },
      summary: `${c.records} records, ${c.complex} complex: sft ${c.sft}, rl ${c.rl}, held-out ${c.heldOut}`,
    };
  }

  return {
    /** Runs a dataset-only stage once: a stored result of the same stage is returned as it is. */
    async pipelineStep(input: PipelineStepInput): Promise<StageResult> {
      const pointer = stageName(input.pipeline, input.index, input.stage.stage);
      const done = await cached.readName<StageResult>(pointer);
      if (done) return done.value;
      return (await cached.writeNameOnce(pointer, await run(input))).value;
    },

    /** The stored result of a stage that runs as a child workflow, if it finished before. */
    async pipelineLookup(
      input: { pipeline: string; index: number; stage: string },
    ): Promise<StageResult | null> {
      return (await cached.readName<StageResult>(stageName(input.pipeline, input.index, input.stage)))
        ?.value ?? null;
    },

    /** Records a finished child-workflow stage (first writer wins). */
    async pipelineRecord(input: { pipeline: string; index: number; result: StageResult }): Promise<void> {
      await cached.writeNameOnce(stageName(input.pipeline, input.index, input.result.stage), input.result);
    },
  };
}
