/**
 * Every workflow the orchestrator worker registers. Deterministic code only: imports
 * `@temporalio/workflow`, `core/` types and pure helpers, and `import type` of activities.
 *
 * @module
 */
export { smokeWorkflow } from "./smoke.ts";
export { episodeWorkflow, iterationWorkflow, taskGroupWorkflow, trainingRun } from "./training.ts";
export { labelDataset } from "./labeling.ts";
