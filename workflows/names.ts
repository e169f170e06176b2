/**
 * Names that cross the wire, for workflow code and its callers: re-exported from `core/names.ts`, whose
 * list (`core/wire_names.json`) the Python trainer reads too.
 *
 * @module
 */
export { ORCHESTRATOR_QUEUE, TRAINER_QUEUE } from "../core/names.ts";
