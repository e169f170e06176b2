/**
 * The plain episode loop: runs one episode to its end in-process, calling the models directly, with the same
 * transitions as the Temporal workflow (`episode.ts`). Used by the tests and the orchestration benchmark.
 *
 * @module
 */
import type { ChatModel, ChatResult, Sampling } from "./llm_types.ts";
import type { TrajectoryRecord } from "./records.ts";
import {
  cachePut,
  emptyCache,
  parseSimulation,
  resolveToolCall,
  type SimulationParse,
  type SimulatorCache,
} from "./simulator.ts";
import {
  applyJudgement,
  applyPolicyFailure,
  applyPolicyResult,
  applyToolResults,
  type EpisodeOptions,
  type EpisodeState,
  episodeToolIndex,
  type JudgeRequestOptions,
  judgeRoundRequests,
  type JudgeVerdict,
  policyRequest,
  startEpisode,
  toolCallsToRun,
  type ToolResult,
  toolResultFromResolution,
  toolResultFromSimulation,
  verdictFromError,
  verdictFromResult,
} from "./episode.ts";

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
 * Run one episode in process with the same transitions the workflow uses. Model errors never escape:
 * they end the episode as `model-failure`, `simulator-failure` or `judge-failure`.
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
  let state = startEpisode(record, opts);
  let cache = opts.cache ?? emptyCache();
  const index = episodeToolIndex(state);
  let judgeCacheHits = 0;
  const judgeOpts: JudgeRequestOptions = { model: models.judge.model, hash: opts.hash };
  if (opts.judgeSampling) judgeOpts.sampling = opts.judgeSampling;
  const limit = Math.max(1, opts.judgeConcurrency ?? 4);

  while (state.phase !== "done") {
    if (state.phase === "policy") {
      let result: ChatResult;
      try {
        result = await models.policy.complete(policyRequest(state));
      } catch (err) {
        state = applyPolicyFailure(state, errorText(err)).state;
        continue;
      }
      state = applyPolicyResult(state, result).state;
    } else if (state.phase === "tools") {
      const results: ToolResult[] = [];
      for (const call of toolCallsToRun(state)) {
        const r = resolveToolCall(index, call, cache);
        if (r.kind !== "simulate") {
          results.push(toolResultFromResolution(call, r));
          continue;
        }
        let parsed: SimulationParse;
        try {
          parsed = parseSimulation(await models.simulator.complete(r.request));
        } catch (err) {
          parsed = { ok: false, error: errorText(err) };
        }
        if (parsed.ok && index.options.cache) cache = cachePut(cache, call, parsed.content);
        results.push(toolResultFromSimulation(call, parsed));
      }
      state = applyToolResults(state, results).state;
    } else {
      const tasks = judgeRoundRequests(state, judgeOpts);
      const verdicts: JudgeVerdict[] = new Array(tasks.length);
      let next = 0;
      const worker = async () => {
        while (next < tasks.length) {
          const k = next++;
          const task = tasks[k]!;
          const cached = opts.judgeCache?.[task.key];
          if (cached && cached.length === task.items.length) {
            judgeCacheHits++;
            verdicts[k] = {
              variant: task.variant,
              step: task.step,
              items: task.items,
              vote: task.vote,
              ok: true,
              answers: cached,
            };
            continue;
          }
          try {
            const v = verdictFromResult(task, await models.judge.complete(task.request));
            if (v.ok && opts.judgeCache) opts.judgeCache[task.key] = v.answers;
            verdicts[k] = v;
          } catch (err) {
            verdicts[k] = verdictFromError(task, errorText(err));
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
      state = applyJudgement(state, verdicts).state;
    }
  }
  return { state, cache, judgeCacheHits };
}
