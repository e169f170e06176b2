/**
 * Activities of the orchestrator worker, built by {@linkcode createActivities} from injected
 * dependencies (model factory, store) so tests can pass their own. No module-level singletons.
 *
 * @module
 */
import { Context } from "@temporalio/activity";
import type { ModelFactory } from "./common.ts";
import { CachedStore } from "../store/cached.ts";
import { createPolicyActivities } from "./policy.ts";
import { createDatasetActivities } from "./dataset.ts";
import { createEpisodeActivities } from "./episode.ts";
import { createRewardActivities } from "./rewards.ts";
import { createLabelingActivities } from "./labeling.ts";
import { createRecordStageActivities } from "./record_stage.ts";
import { createPipelineActivities } from "./pipeline.ts";
import { createEvalActivities } from "./eval.ts";
import type { ArtifactStore } from "../store/mod.ts";

/** What activities need from the outside world. */
export interface ActivityDeps {
  store: ArtifactStore;
  /** Builds a role's model client from the run config; keys come from the environment only. */
  models: ModelFactory;
  /** Root that relative paths in run configs resolve against. */
  root: string;
}

/** How often running activities heartbeat (a dead worker is noticed after the preset's heartbeat timeout). */
export const HEARTBEAT_EVERY_MS = 1_000;

/**
 * Wraps every activity so it heartbeats while it runs. A killed worker then loses its activities
 * after the preset's `heartbeatTimeout` (seconds), not after `startToCloseTimeout` (minutes).
 */
export function withHeartbeats<T extends Record<string, (input: never) => Promise<unknown>>>(acts: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(acts)) {
    out[name] = async (input: never) => {
      let ctx: Context | undefined;
      try {
        ctx = Context.current();
      } catch {
        ctx = undefined; // called outside an activity (unit tests)
      }
      // Local activities cannot heartbeat: a lost worker shows as a workflow task timeout instead.
      const timer = ctx && !ctx.info.isLocal
        ? setInterval(() => ctx!.heartbeat(), HEARTBEAT_EVERY_MS)
        : undefined;
      try {
        return await fn(input);
      } finally {
        if (timer !== undefined) clearInterval(timer);
      }
    };
  }
  return out as T;
}

/** Builds the activity functions over their dependencies. */
export function createActivities(deps: ActivityDeps) {
  const cached = new CachedStore(deps.store); // one set of caches per worker, shared by every activity
  return withHeartbeats({
    /** Echoes its input; used by the smoke workflow to prove the round trip. */
    smokeEcho(input: { text: string }): Promise<{ text: string }> {
      return Promise.resolve({ text: input.text });
    },
    ...createDatasetActivities(deps),
    ...createEpisodeActivities({ ...deps, cached }),
    ...createRewardActivities({ store: deps.store, cached }),
    ...createPolicyActivities({ store: deps.store, cached, root: deps.root }),
    ...createLabelingActivities({ ...deps, cached }),
    ...createRecordStageActivities({ store: deps.store, cached, models: deps.models }),
    ...createPipelineActivities({ ...deps, cached }),
    ...createEvalActivities({ store: deps.store, cached, root: deps.root }),
  });
}

/** The activity functions, for `proxyActivities<Activities>()` in workflows. */
export type Activities = ReturnType<typeof createActivities>;
