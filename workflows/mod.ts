/**
 * Every workflow the orchestrator worker registers. Deterministic code only: imports
 * `@temporalio/workflow`, `core/` types and pure helpers, and `import type` of activities.
 *
 * @module
 */
export { smokeWorkflow } from "./smoke.ts";
export { episodeWorkflow, taskGroupWorkflow } from "./episode.ts";
export { iterationWorkflow, trainingRun } from "./training.ts";
export { labelDataset } from "./labeling.ts";
export { recordStage } from "./record_stage.ts";
export { sftRun } from "./sft.ts";
export { pipelineRun } from "./pipeline.ts";
export { evalWorkflow } from "./eval.ts";
