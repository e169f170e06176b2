/**
 * Activities of the orchestrator worker, built by {@linkcode createActivities} from injected
 * dependencies (model clients, store, clock) so tests can pass their own.
 *
 * @module
 */
import type { ArtifactStore } from "../store/mod.ts";

/** What activities need from the outside world. */
export interface ActivityDeps {
  store: ArtifactStore;
}

/** Builds the activity functions over their dependencies. */
export function createActivities(_deps: ActivityDeps) {
  return {
    /** Echoes its input; used by the smoke workflow to prove the round trip. */
    smokeEcho(input: { text: string }): Promise<{ text: string }> {
      return Promise.resolve({ text: input.text });
    },
  };
}

/** The activity functions, for `proxyActivities<Activities>()` in workflows. */
export type Activities = ReturnType<typeof createActivities>;
