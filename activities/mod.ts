/**
 * Activities of the orchestrator worker, built by {@linkcode createActivities} from injected
 * dependencies (model factory, store) so tests can pass their own. No module-level singletons.
 *
 * @module
 */
import { createTrainingActivities, type ModelFactory } from "./training.ts";
import type { ArtifactStore } from "../store/mod.ts";

/** What activities need from the outside world. */
export interface ActivityDeps {
  store: ArtifactStore;
  /** Builds a role's model client from the run config; keys come from the environment only. */
  models: ModelFactory;
  /** Root that relative paths in run configs resolve against. */
  root: string;
}

/** Builds the activity functions over their dependencies. */
export function createActivities(deps: ActivityDeps) {
  return {
    /** Echoes its input; used by the smoke workflow to prove the round trip. */
    smokeEcho(input: { text: string }): Promise<{ text: string }> {
      return Promise.resolve({ text: input.text });
    },
    ...createTrainingActivities(deps),
  };
}

/** The activity functions, for `proxyActivities<Activities>()` in workflows. */
export type Activities = ReturnType<typeof createActivities>;
