/**
 * The plain episode loop: runs one episode to its end in-process, calling the models directly, over the same
 * engine as the Temporal activities ({@linkcode advance} in `core/engine.ts`). Used by the tests and the
 * orchestration benchmark.
 *
 * @module
 */
import type { ChatModel, Sampling } from "./llm_types.ts";
import type { TrajectoryRecord } from "./records.ts";
import {
  cachePut,
  emptyCache,
  parseSimulation,
  type SimulationParse,
  type SimulatorCache,
} from "./simulator.ts";
import {
  type EpisodeOptions,
  type EpisodeState,
  policyRequest,
  startEpisode,
  toolResultFromSimulation,
} from "./episode.ts";
import {
  askJudge,
  type JudgeRequestOptions,
  judgeRoundRequests,
  type JudgeVerdict,
  verdictFromError,
} from "./episode_judge.ts";
import {
  advance,
  completeJudge,
  completePolicy,
  completeTools,
  failPending,
  simulationOf,
} from "./engine.ts";

/** Models of {@linkcode runEpisode}. */
export interface EpisodeModels {
  policy: ChatModel;
  simulator: ChatModel;
  judge: ChatModel;
}

/** Options of {@linkcode runEpisode}. */
export interface RunEpisodeOptions extends EpisodeOptions {
  /** Hash for judge cache keys (required: core stays free of `node:crypto`). */
  hash: (text: string) => string;
  /** Sampling of judge requests. */
  judgeSampling?: Sampling;
  /** Consistency cache shared with other episodes of the group; a fresh one when absent. */
  cache?: SimulatorCache;
  /** Judge verdict cache by task key (answers per item); read and written. */
  judgeCache?: Record<string, boolean[]>;
  /** Judge calls in flight at once (default 4). Tool calls of a step run one after another. */
  judgeConcurrency?: number;
}

/** Result of {@linkcode runEpisode}. */
export interface RunEpisodeResult {
  state: EpisodeState;
  /** The consistency cache after the episode (pass it to the next episode of the group). */
  cache: SimulatorCache;
  /** Judge tasks answered from `judgeCache`. */
  judgeCacheHits: number;
}

function errorText(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/**
 * Run one episode in process with the engine the workflow uses. Model errors never escape: they end the
 * episode as `model-failure`, `simulator-failure` or `judge-failure`.
 *
 * @example
 * ```ts
 * const { state } = await runEpisode(record, { policy, simulator, judge }, { hash: sha256Hex });
 * const verdicts = episodeVerdicts(state);
 * ```
 */
export async function runEpisode(
  record: TrajectoryRecord,
  models: EpisodeModels,
  opts: RunEpisodeOptions,
): Promise<RunEpisodeResult> {
  let cache = opts.cache ?? emptyCache();
  const judgeCache = opts.judgeCache ?? {};
  let judgeCacheHits = 0;
  const judge: JudgeRequestOptions = { model: models.judge.model, hash: opts.hash };
  if (opts.judgeSampling) judge.sampling = opts.judgeSampling;
  const limit = Math.max(1, opts.judgeConcurrency ?? 4);
  const caches = {
    toolResult: (key: string) => cache.entries[key],
    verdict: (key: string) => {
      const hit = judgeCache[key];
      if (hit) judgeCacheHits++;
      return hit;
    },
  };

  let state = startEpisode(record, opts);
  for (;;) {
    const { state: at, pending } = advance(state, caches, judge);
    state = at;
    if (pending.kind === "end") break;
    if (pending.kind === "policy") {
      try {
        state = completePolicy(state, await models.policy.complete(policyRequest(state)));
      } catch (err) {
        state = failPending(state, judge, errorText(err));
      }
    } else if (pending.kind === "tools") {
      const results = [];
      for (const index of pending.calls) {
        const sim = simulationOf(state, index);
        let parsed: SimulationParse;
        try {
          parsed = parseSimulation(await models.simulator.complete(sim.request));
        } catch (err) {
          parsed = { ok: false, error: errorText(err) };
        }
        const call = sim.call;
        if (parsed.ok && sim.cache) cache = cachePut(cache, call, parsed.content);
        results.push(toolResultFromSimulation(call, parsed));
      }
      state = completeTools(state, results);
    } else {
      const tasks = judgeRoundRequests(state, judge);
      const verdicts = new Map<number, JudgeVerdict>();
      let next = 0;
      const lane = async () => {
        while (next < pending.tasks.length) {
          const i = pending.tasks[next++]!;
          const task = tasks[i]!;
          try {
            const v = await askJudge(task, () => models.judge.complete(task.request));
            if (v.ok && opts.judgeCache) opts.judgeCache[task.key] = v.answers;
            verdicts.set(i, v);
          } catch (err) {
            verdicts.set(i, verdictFromError(task, errorText(err)));
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(limit, pending.tasks.length) }, lane));
      state = completeJudge(state, verdicts);
    }
  }
  return { state, cache, judgeCacheHits };
}
