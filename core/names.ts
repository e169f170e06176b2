/**
 * Names that cross the wire: task queues, the trainer's activity, workflow-id formats, store-name formats
 * and search attributes. They live in `core/wire_names.json`, which the Python trainer reads too
 * (`trainer/cm2_trainer/contract.py`), so the two sides cannot drift. They are API: running histories and
 * stored runs use them. Signal, query and update names are defined once each beside their workflow.
 *
 * @module
 */
import WIRE from "./wire_names.json" with { type: "json" };

/** Fills `{field}` placeholders of a name format; a missing field is an error, not "undefined". */
export function fillName(format: string, fields: Record<string, string | number>): string {
  return format.replace(/\{(\w+)\}/g, (_, k: string) => {
    const v = fields[k];
    if (v === undefined) throw new Error(`name format ${format} needs ${k}`);
    return String(v);
  });
}

/** The raw list (for tests and tools). */
export const WIRE_NAMES = WIRE;

/** Default task queue of the orchestrator worker (workflows + non-GPU activities). */
export const ORCHESTRATOR_QUEUE: string = WIRE.taskQueues.orchestrator;
/** The task queue of evaluations (`cm2 eval`; `worker.ts` polls it too). */
export const EVAL_QUEUE = "cm2-eval";
/** Default task queue of the Python trainer worker. */
export const TRAINER_QUEUE: string = WIRE.taskQueues.trainer;
/** The trainer worker's activities. */
export const UPDATE_POLICY_ACTIVITY: string = WIRE.activities.updatePolicy;
export const SFT_TRAIN_ACTIVITY: string = WIRE.activities.sftTrain;

/** Readable, deterministic workflow ids: `run/<name>`, `run/<name>/it-<n>`, `…/task-<k>/ep-<g>`. */
export const workflowIds = {
  run: (name: string) => fillName(WIRE.workflowIds.run, { name }),
  iteration: (name: string, iteration: number) => fillName(WIRE.workflowIds.iteration, { name, iteration }),
  validation: (name: string, iteration: number) => fillName(WIRE.workflowIds.validation, { name, iteration }),
  episode: (name: string, iteration: number, task: number, episode: number, kind = "it") =>
    fillName(WIRE.workflowIds.episode, { name, kind, iteration, task, episode }),
  group: (name: string, iteration: number, task: number, kind = "it") =>
    fillName(WIRE.workflowIds.group, { name, kind, iteration, task }),
  label: (out: string) => fillName(WIRE.workflowIds.label, { out }),
  sft: (name: string) => fillName(WIRE.workflowIds.sft, { name }),
  pipeline: (name: string) => fillName(WIRE.workflowIds.pipeline, { name }),
};

/** Store-name formats of a run's artifacts. */
export const storeNames = {
  checkpoint: (run: string, iteration: number) => fillName(WIRE.storeNames.checkpoint, { run, iteration }),
  checkpoints: (run: string) => fillName(WIRE.storeNames.checkpoints, { run }),
  metrics: (run: string, kind: string, iteration: number) =>
    fillName(WIRE.storeNames.metrics, { run, kind, iteration }),
  group: (run: string, kind: string, iteration: number, task: number) =>
    fillName(WIRE.storeNames.group, { run, kind, iteration, task }),
  sftCheckpoint: (run: string, step: number) => fillName(WIRE.storeNames.sftCheckpoint, { run, step }),
  sftFinal: (run: string) => fillName(WIRE.storeNames.sftFinal, { run }),
};

/** Custom search attributes of cm2 runs (registered on the embedded dev server). */
export const SEARCH_ATTRIBUTES: Readonly<Record<string, string>> = WIRE.searchAttributes;
