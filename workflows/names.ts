/**
 * Names that cross the wire: task queues, workflow types, signals, queries, updates and
 * workflow-id formats. They are API: never rename them casually (running histories use them).
 *
 * @module
 */

/** Default task queue of the orchestrator worker (workflows + non-GPU activities). */
export const ORCHESTRATOR_QUEUE = "cm2-orchestrator";
/** Default task queue of the Python trainer worker. */
export const TRAINER_QUEUE = "cm2-trainer";
