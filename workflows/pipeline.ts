/**
 * The durable pipeline `pipelineRun` (`cm2 pipeline recipe.json`): CM2's stages in the recipe's order, each
 * stage's output dataset feeding the next (`core/pipeline.ts` names them). Dataset-only stages (import, rule
 * filter, split) are activities; labeling, SFT and RL are child workflows under their usual ids (`label/<out>`,
 * `sft/<name>`, `run/<name>`), so each is inspected in the Web UI as when it runs alone. Every finished stage
 * is recorded in the store, so a re-run pipeline skips it; inside a stage, records and steps are resumed by
 * the stage itself (stored labels, SFT checkpoints, RL checkpoints). Deterministic wiring only.
 *
 * @module
 */
import {
  ApplicationFailure,
  defineQuery,
  executeChild,
  proxyActivities,
  setHandler,
} from "@temporalio/workflow";
import type { Activities } from "../activities/mod.ts";
import type { StageResult } from "../activities/pipeline.ts";
import type { RunConfig } from "../core/config.ts";
import { storeNames, workflowIds } from "../core/names.ts";
import type { PipelineRecipe, PipelineStage } from "../core/pipeline.ts";
import { labelDataset, labelWorkflowId } from "./labeling.ts";
import { recordStage, stageWorkflowId } from "./record_stage.ts";
import { STORE } from "./presets.ts";
import { sftRun } from "./sft.ts";
import { trainingRun } from "./training.ts";

const store = proxyActivities<Activities>(STORE);

/** Input of {@linkcode pipelineRun}. */
export interface PipelineInput {
  recipe: PipelineRecipe;
  /** The run config of the model-backed stages (the recipe's `config` file, loaded by the client). */
  config: RunConfig;
  /**
   * Prompt versions of the LLM stages, fixed by the client at start (as `cm2 label` does), so a run never mixes
   * versions; the workflow cannot import the prompt modules (they pull in zod).
   */
  promptVersions: { label: string; "filter-llm": string; "compress-cot": string };
}

/** What `pipelineStatus` returns. */
export interface PipelineStatus {
  name: string;
  /** Every step in order (an imported file adds `import` first), with its result once finished. */
  stages: { stage: string; status: "pending" | "running" | "done" | "skipped"; result?: StageResult }[];
}

/** Query: the stages of a pipeline and what each produced. */
export const pipelineStatusQuery = defineQuery<PipelineStatus>("pipelineStatus");

/** The run config of the pipeline's SFT or RL run: its name, datasets and (after SFT) initial checkpoint. */
function stageConfig(input: PipelineInput, data: { split: StageResult["split"]; sft: boolean }): RunConfig {
  const { config, recipe } = input;
  const split = data.split;
  // after a split, SFT trains on its parts only (a held-out part it did not make is not borrowed from the config)
  const { heldOut: _configHeldOut, ...sft } = config.sft;
  return {
    ...config,
    name: recipe.name,
    sft: split
      ? {
        ...sft,
        ...(split.sft ? { dataset: split.sft } : {}),
        ...(split.heldOut ? { heldOut: split.heldOut } : {}),
      }
      : config.sft,
    trainer: { ...config.trainer, ...(data.sft ? { init: storeNames.sftFinal(recipe.name) } : {}) },
  };
}

/** Runs a recipe; see the module doc. Returns every stage's result. */
export async function pipelineRun(input: PipelineInput): Promise<StageResult[]> {
  const { recipe } = input;
  const name = recipe.name;
  const steps: ({ stage: "import" } | PipelineStage)[] = [
    ...(recipe.input.startsWith("datasets/") ? [] : [{ stage: "import" as const }]),
    ...recipe.stages,
  ];
  const status: PipelineStatus = { name, stages: steps.map((s) => ({ stage: s.stage, status: "pending" })) };
  setHandler(pipelineStatusQuery, () => status);

  let current = recipe.input;
  let split: StageResult["split"] = undefined;
  let sftDone = false;
  const results: StageResult[] = [];
  for (const [index, step] of steps.entries()) {
    const row = status.stages[index]!;
    row.status = "running";
    let result: StageResult;
    if (step.stage === "import" || step.stage === "filter" || step.stage === "split") {
      result = await store.pipelineStep({ pipeline: name, index, stage: step, source: current });
    } else {
      const stored = await store.pipelineLookup({ pipeline: name, index, stage: step.stage });
      result = stored ?? await runChild(input, step, { current, split, sft: sftDone });
      if (!stored) await store.pipelineRecord({ pipeline: name, index, result });
    }
    if (result.dataset) current = result.dataset;
    if (result.split) {
      split = result.split;
      if (result.split.rl) current = result.split.rl;
    }
    if (step.stage === "sft") sftDone = true;
    row.status = "done";
    row.result = result;
    results.push(result);
  }
  return results;
}

/** Runs a model-backed stage as a child workflow and summarises it. */
async function runChild(
  input: PipelineInput,
  step: Extract<PipelineStage, { stage: "filter-llm" | "compress-cot" | "label" | "sft" | "rl" }>,
  at: { current: string; split: StageResult["split"]; sft: boolean },
): Promise<StageResult> {
  const name = input.recipe.name;
  const config = stageConfig(input, at);
  if (step.stage === "filter-llm" || step.stage === "compress-cot") {
    const kind = step.stage === "filter-llm" ? "filter" : "compress";
    const out = `${name}-${kind === "filter" ? "llm" : "cot"}`;
    const c = config.stages;
    const summary = await executeChild(recordStage, {
      workflowId: stageWorkflowId(kind, out),
      args: [{
        kind,
        config,
        dataset: at.current.slice("datasets/".length),
        out,
        promptVersion: input.promptVersions[step.stage],
        params: step.stage === "compress-cot" ? { target: step.target ?? c.compressTarget } : {},
        concurrency: c.concurrency,
        maxAttempts: c.maxAttempts,
        budget: {
          ...(c.budgetUsd !== undefined ? { usd: c.budgetUsd } : {}),
          ...(c.budgetTokens !== undefined ? { tokens: c.budgetTokens } : {}),
        },
      }],
    });
    const counts = Object.entries(summary.counts).map(([k, v]) => `${k} ${v}`).join(", ");
    return { stage: step.stage, dataset: `datasets/${out}`, summary: `${counts}, failed ${summary.failed}` };
  }
  if (step.stage === "label") {
    const out = `${name}-rl-labeled`;
    const l = config.labeling;
    const summary = await executeChild(labelDataset, {
      workflowId: labelWorkflowId(out),
      args: [{
        config,
        dataset: at.current.slice("datasets/".length),
        out,
        promptVersion: input.promptVersions.label,
        variants: step.variants ?? l.variants,
        concurrency: l.concurrency,
        maxAttempts: l.maxAttempts,
        weightRepairTolerance: l.weightRepairTolerance,
        budget: {
          ...(l.budgetUsd !== undefined ? { usd: l.budgetUsd } : {}),
          ...(l.budgetTokens !== undefined ? { tokens: l.budgetTokens } : {}),
        },
      }],
    });
    return {
      stage: "label",
      dataset: `datasets/${out}`,
      summary: `labeled ${summary.labeled}, rejected ${summary.rejected}, failed ${summary.failed}`,
    };
  }
  if (step.stage === "sft") {
    if (!at.split?.sft) {
      throw ApplicationFailure.nonRetryable(
        `Pipeline ${name}: the split left no record for SFT; lower the split's rl and heldOut, or drop the sft stage`,
        "InvalidInput",
      );
    }
    const r = await executeChild(sftRun, { workflowId: workflowIds.sft(name), args: [{ config }] });
    const last = r.history.at(-1);
    return {
      stage: "sft",
      summary: `${r.steps} steps, loss ${last?.loss?.toFixed(4) ?? "-"}, held-out loss ${
        last?.heldOutLoss?.toFixed(4) ?? "-"
      } → ${storeNames.sftFinal(name)}`,
    };
  }
  const rl: RunConfig = {
    ...config,
    dataset: {
      ...config.dataset,
      path: at.current,
      heldOut: at.split?.heldOutCount ?? config.dataset.heldOut,
    },
  };
  let base = "";
  if (step.baseline) {
    // The base model alone: no SFT adapter, no update, one validation pass on the same held-out records.
    const { init: _init, ...trainer } = rl.trainer;
    const b = await executeChild(trainingRun, {
      workflowId: workflowIds.run(`${name}-base`),
      args: [{
        config: {
          ...rl,
          name: `${name}-base`,
          trainer,
          cm2: { ...rl.cm2, iterations: 0, validationEvery: Math.max(1, rl.cm2.validationEvery) },
        },
      }],
    });
    const v = b.recent.find((s) => s.validation);
    base = `; base model validation reward ${v?.meanReward.toFixed(3) ?? "-"}`;
  }
  const r = await executeChild(trainingRun, { workflowId: workflowIds.run(name), args: [{ config: rl }] });
  const last = r.recent.filter((s) => !s.validation).at(-1);
  return {
    stage: "rl",
    summary: `${r.iterations} iterations, policy v${r.policyVersion}, last reward ${
      last?.meanReward.toFixed(3) ?? "-"
    }${
      r.recent.filter((s) => s.validation).map((s) =>
        `; validation at ${s.iteration}: ${s.meanReward.toFixed(3)}`
      )
        .join("")
    }${base}`,
  };
}
