/**
 * Activities of the training loop over `core/` (episode state machine, simulator, judge, rewards), `llm/`
 * (one model call per activity) and `store/` (every large value lives there; activities take and return
 * refs plus small decisions). Not thin yet: episode settling (`settle`), batch assembly in
 * `computeRewards` and policy publishing live here and are to move to `core/` and a policy room.
 *
 * Idempotency: each activity reads immutable blobs and writes content-addressed ones, so a retry
 * recomputes the same refs. The only named pointers written are first-writer-wins caches
 * (simulated tool results shared by a group, judge verdicts), so siblings and retries agree.
 *
 * @module
 */
import { ApplicationFailure, Context } from "@temporalio/activity";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { RunConfig } from "../core/config.ts";
import {
  applyJudgement,
  applyPolicyFailure,
  applyPolicyResult,
  applyToolResults,
  type EpisodeOptions,
  type EpisodeState,
  episodeToolIndex,
  judgeRoundRequests,
  type JudgeTask,
  type JudgeVerdict,
  type Next,
  policyRequest,
  startEpisode as startEpisodeState,
  toolCallsToRun,
  type ToolResult,
  toolResultFromResolution,
  toolResultFromSimulation,
  verdictFromError,
  verdictFromResult,
} from "../core/episode.ts";
import { importFiles } from "../core/importers/mod.ts";
import { LlmError } from "../core/llm_types.ts";
import { resolveRewardOptions, rewardOptionsOf } from "../core/rewards.ts";
import {
  cacheKey,
  emptyCache,
  parseSimulation,
  resolveToolCall,
  simulationRequest,
} from "../core/simulator.ts";
import type { Batch, UpdateMetrics } from "../core/trainer_contract.ts";
import { storeNames } from "../core/names.ts";
import { CachedStore } from "../store/cached.ts";
import { scoreGroups } from "../core/batch.ts";
import { policyModelName } from "./policy.ts";
import { type ModelFactory, sha256Hex, toFailure } from "./common.ts";
import { datasetRef as namedDataset, loadManifest, loadRecord, saveDataset } from "../store/datasets.ts";
import { type ArtifactStore, putJson, type Ref } from "../store/mod.ts";

/** What the training activities need. */
export interface TrainingDeps {
  store: ArtifactStore;
  models: ModelFactory;
  /** Root that relative dataset paths in configs resolve against. */
  root: string;
  /** The worker's caches over the store (shared with the policy activities); made here when absent. */
  cached?: CachedStore;
}

type Step = { stateRef: Ref; next: "policy" | "tools" | "judge" | "end" };

/**
 * Where an episode stands after one of its activities: the state ref, what follows, and what that
 * needs (`tools`: the plan and the calls to simulate; `judge`: the round's tasks not answered by the
 * verdict cache; `end`: small facts about the finished episode). Only refs and small values.
 */
export interface Advance {
  stateRef: Ref;
  next: Step["next"];
  planRef?: Ref;
  simulate?: number[];
  tasksRef?: Ref;
  tasks?: number[];
  end?: { ok: boolean; endReason: string; steps: number; turns: number };
}

function nextOf(n: Next): Step["next"] {
  return n === "judge-turn" ? "judge" : n;
}

/** Episode options from the run config (limits, judge, simulator, unfinished-turn rule of the preset). */
export function episodeOptions(config: RunConfig): EpisodeOptions {
  const c = config.cm2;
  const reward = resolveRewardOptions(rewardOptionsOf(c));
  return {
    maxAssistantSteps: c.limits.maxAssistantSteps,
    maxUserTurns: c.limits.maxUserTurns,
    maxContextTokens: c.limits.maxContextTokens,
    ...(config.models.policy.sampling.max_tokens
      ? { maxResponseTokens: config.models.policy.sampling.max_tokens }
      : {}),
    unfinishedTurn: reward.unfinishedTurn,
    judge: { mode: c.judge.mode, votes: c.judge.votes, itemsPerCall: c.judge.itemsPerCall },
    simulator: { replayScope: c.simulator.replayScope, cache: c.simulator.cache },
  };
}

/**
 * The idempotency key of one logical model call: the workflow id plus what the call is
 * (`policy/<step>`, `sim/<step>/<call>`, `judge/<task key>`). Stable across activity retries and
 * across runs that take the same path, unlike activity ids (which shift with cache hits).
 */
function callKey(what: string): string {
  let wf = "standalone";
  try {
    wf = Context.current().info.workflowExecution?.workflowId ?? wf;
  } catch { /* outside an activity */ }
  return `${wf}/${what}`;
}

/** Builds the training activities over their dependencies. */
export function createTrainingActivities(deps: TrainingDeps) {
  const { store } = deps;
  const cached = deps.cached ?? new CachedStore(store);
  const readJson = <T>(ref: Ref) => cached.readJson<T>(ref);
  const writeJson = (value: unknown) => cached.writeJson(value);
  const loadState = (ref: Ref) => readJson<EpisodeState>(ref);
  const saveState = (state: EpisodeState) => writeJson(state);
  const simName = (groupKey: string, key: string) => `${groupKey}/sim/${sha256Hex(key)}`;
  const judgeName = (key: string) => `judge-cache/${key.slice(0, 2)}/${key}`;

  /** A run config by ref (immutable: parsed once per worker). */
  const cfg = (ref: Ref) => cached.memo<RunConfig>(ref);
  const readCached = (name: string) => cached.settledText(name);

  /**
   * Runs the pure transitions that follow a model call (or the episode start) until the episode
   * needs a model again or ends: tool calls resolved without a model (exact replay, the group's
   * cache, error results) are applied at once, judge rounds answered wholly by the verdict cache are
   * merged at once. Saves the state once and returns where the episode stands, with the plan of the
   * model calls it needs next. Doing this inside the activity that made the call, instead of in
   * activities of their own, saves two to four workflow round trips and state writes per step.
   */
  async function settle(
    config: RunConfig,
    groupKey: string,
    state0: EpisodeState,
    next0: Step["next"],
  ): Promise<Advance> {
    let state = state0;
    let next = next0;
    for (;;) {
      if (next === "tools") {
        const index = episodeToolIndex(state);
        const results: (ToolResult | null)[] = [];
        const simulate: number[] = [];
        for (const call of toolCallsToRun(state)) {
          const cache = emptyCache();
          if (index.options.cache) {
            const hit = await readCached(simName(groupKey, cacheKey(call.name, call.arguments)));
            if (hit !== undefined) cache.entries[cacheKey(call.name, call.arguments)] = hit;
          }
          const r = resolveToolCall(index, call, cache);
          if (r.kind === "simulate") {
            results.push(null);
            simulate.push(call.index);
          } else results.push(toolResultFromResolution(call, r));
        }
        if (simulate.length === 0) {
          const t = applyToolResults(state, results.filter((r): r is ToolResult => r !== null));
          ({ state } = t);
          next = nextOf(t.next);
          continue;
        }
        const stateRef = await saveState(state);
        const planRef = await writeJson({ stateRef, results });
        return { stateRef, next, planRef, simulate };
      }
      if (next === "judge") {
        const tasks = judgeRoundRequests(state, { model: config.models.judge.model, hash: sha256Hex });
        const cached: (boolean[] | null)[] = [];
        const open: number[] = [];
        for (const [i, task] of tasks.entries()) {
          const hit = await readCached(judgeName(task.key));
          const answers = hit ? JSON.parse(hit) as boolean[] : null;
          if (answers && answers.length === task.items.length) cached.push(answers);
          else {
            cached.push(null);
            open.push(i);
          }
        }
        if (open.length === 0) {
          const t = applyJudgement(
            state,
            tasks.map((task, i) => ({
              variant: task.variant,
              step: task.step,
              items: task.items,
              vote: task.vote,
              ok: true as const,
              answers: cached[i]!,
            })),
          );
          ({ state } = t);
          next = nextOf(t.next);
          continue;
        }
        const stateRef = await saveState(state);
        const tasksRef = await writeJson({ stateRef, tasks, cached });
        return { stateRef, next, tasksRef, tasks: open };
      }
      const stateRef = await saveState(state);
      if (next === "policy") return { stateRef, next };
      return {
        stateRef,
        next,
        end: {
          ok: state.end?.ok ?? false,
          endReason: state.end?.reason ?? "unknown",
          steps: state.assistantSteps,
          turns: state.turns.length,
        },
      };
    }
  }

  return {
    /** Stores a run config; workflows pass the ref so histories stay small. */
    async putConfig(input: { config: RunConfig }): Promise<{ configRef: Ref }> {
      return { configRef: await putJson(store, input.config) };
    },

    /**
     * Imports the configured dataset (a file, or `datasets/<name>` in the store), keeps the records
     * that have checklists, stores it, and splits off the last `heldOut` records for validation.
     */
    async prepareDataset(
      input: { config: RunConfig },
    ): Promise<{ datasetRef: Ref; trainCount: number; valCount: number }> {
      const spec = input.config.dataset;
      let ref = spec.path.startsWith("datasets/") ? await namedDataset(store, spec.path.slice(9)) : undefined;
      if (!ref) {
        const file = path.isAbsolute(spec.path) ? spec.path : path.join(deps.root, spec.path);
        const report = await importFiles([file], (p) => fs.readFile(p, "utf8"));
        const labeled = report.records.filter((r) => r.checklists.length > 0);
        if (labeled.length === 0) {
          throw ApplicationFailure.nonRetryable(
            `Dataset ${spec.path} has no record with a checklist (${report.records.length} imported, ` +
              `${report.errors.length} errors): label it first with \`cm2 label\``,
            "InvalidInput",
          );
        }
        ({ ref } = await saveDataset(store, `run-${input.config.name}`, labeled, {
          sources: report.files.map((f) => ({
            file: f.file,
            format: f.format ?? "unknown",
            imported: f.imported,
            errors: f.errored,
          })),
          derivedFrom: { step: "prepare", parent: null },
        }));
      }
      const manifest = await loadManifest(store, ref);
      const valCount = Math.min(spec.heldOut, Math.max(0, manifest.count - 1));
      return { datasetRef: ref, trainCount: manifest.count - valCount, valCount };
    },

    /** Builds the initial episode state (system, tools, first user message). */
    async startEpisode(
      input: { configRef: Ref; groupKey: string; datasetRef: Ref; recordIndex: number; episodeId: string },
    ): Promise<Advance> {
      const config = await cfg(input.configRef);
      const manifest = await loadManifest(store, input.datasetRef);
      const record = await loadRecord(store, manifest, input.recordIndex);
      const state = startEpisodeState(record, episodeOptions(config));
      return await settle(config, input.groupKey, state, state.phase === "done" ? "end" : "policy");
    },

    /** One policy call (one assistant step), then the pure work up to the next model call. */
    async policyStep(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; policyVersion?: number },
    ): Promise<Advance> {
      const config = await cfg(input.configRef);
      const state = await loadState(input.stateRef);
      const live = policyModelName(config, input.policyVersion ?? 0);
      const policy = config.models.policy;
      const model = live === policy.model ? deps.models("policy", config) : deps.models("policy", {
        ...config,
        models: { ...config.models, policy: { ...policy, model: live } },
      });
      let result;
      try {
        result = await model.complete({
          ...policyRequest(state),
          idempotencyKey: callKey(`policy/${state.assistantSteps}`),
        });
      } catch (err) {
        toFailure(err);
      }
      const t = applyPolicyResult(state, result);
      return await settle(config, input.groupKey, t.state, nextOf(t.next));
    },

    /** One simulator call for one tool call; the first result for (tool, args) wins within the group. */
    async simulateCall(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; callIndex: number },
    ): Promise<{ callIndex: number; resultRef: Ref }> {
      const config = await cfg(input.configRef);
      const state = await loadState(input.stateRef);
      const index = episodeToolIndex(state);
      const call = toolCallsToRun(state).find((c) => c.index === input.callIndex);
      if (!call) {
        throw ApplicationFailure.nonRetryable(`No pending tool call ${input.callIndex}`, "InvalidInput");
      }
      const name = simName(input.groupKey, cacheKey(call.name, call.arguments));
      const existing = index.options.cache ? await readCached(name) : undefined;
      let result: ToolResult;
      if (existing !== undefined) {
        result = { index: call.index, kind: "cached", content: existing };
      } else {
        let parsed;
        try {
          parsed = parseSimulation(
            await deps.models("simulator", config).complete({
              ...simulationRequest(index, call),
              idempotencyKey: callKey(`sim/${state.assistantSteps}/${call.index}`),
            }),
          );
        } catch (err) {
          if (err instanceof LlmError && !err.retryable) parsed = { ok: false as const, error: err.message };
          else toFailure(err);
        }
        result = toolResultFromSimulation(call, parsed);
        if (parsed.ok && index.options.cache) {
          const mine = await store.put(new TextEncoder().encode(parsed.content));
          const { winner, text } = await cached.settle(name, mine);
          if (winner.sha256 !== mine.sha256) result = { index: call.index, kind: "cached", content: text };
        }
      }
      return { callIndex: input.callIndex, resultRef: await writeJson(result) };
    },

    /** Appends the tool results (planned and simulated), then the pure work up to the next model call. */
    async applyTools(
      input: {
        configRef: Ref;
        groupKey: string;
        stateRef: Ref;
        planRef: Ref;
        simulated: { callIndex: number; resultRef: Ref }[];
      },
    ): Promise<Advance> {
      const config = await cfg(input.configRef);
      const state = await loadState(input.stateRef);
      const plan = await readJson<{ results: (ToolResult | null)[] }>(input.planRef);
      const results: ToolResult[] = plan.results.filter((r): r is ToolResult => r !== null);
      for (const s of input.simulated) results.push(await readJson<ToolResult>(s.resultRef));
      results.sort((a, b) => a.index - b.index);
      const t = applyToolResults(state, results);
      return await settle(config, input.groupKey, t.state, nextOf(t.next));
    },

    /** One judge call; a verdict that does not parse is data (the episode ends as judge-failure). */
    async judgeCall(
      input: { configRef: Ref; groupKey: string; tasksRef: Ref; task: number },
    ): Promise<JudgeVerdict & { task: number }> {
      const config = await cfg(input.configRef);
      const plan = await readJson<{ tasks: JudgeTask[] }>(input.tasksRef);
      const task = plan.tasks[input.task];
      if (!task) throw ApplicationFailure.nonRetryable(`No judge task ${input.task}`, "InvalidInput");
      let verdict: JudgeVerdict;
      try {
        verdict = verdictFromResult(
          task,
          await deps.models("judge", config).complete({
            ...task.request,
            idempotencyKey: callKey(`judge/${task.key}`),
          }),
        );
      } catch (err) {
        if (err instanceof LlmError && !err.retryable) {
          verdict = verdictFromError(task, `${err.type}: ${err.message}`);
        } else toFailure(err);
      }
      const name = judgeName(task.key);
      if (verdict.ok && !cached.isSettled(name)) await cached.settle(name, await writeJson(verdict.answers));
      return { ...verdict, task: input.task };
    },

    /** Merges the round's verdicts (cached and new) into the state, then the pure work up to the next model call. */
    async applyJudge(
      input: {
        configRef: Ref;
        groupKey: string;
        stateRef: Ref;
        tasksRef: Ref;
        verdicts: (JudgeVerdict & { task: number })[];
      },
    ): Promise<Advance> {
      const config = await cfg(input.configRef);
      const state = await loadState(input.stateRef);
      const plan = await readJson<{ tasks: JudgeTask[]; cached: (boolean[] | null)[] }>(input.tasksRef);
      const verdicts: JudgeVerdict[] = [];
      plan.tasks.forEach((task, i) => {
        const answers = plan.cached[i];
        if (answers) {
          verdicts.push({
            variant: task.variant,
            step: task.step,
            items: task.items,
            vote: task.vote,
            ok: true,
            answers,
          });
        }
      });
      for (const { task: _t, ...v } of input.verdicts) verdicts.push(v);
      const t = applyJudgement(state, verdicts);
      return await settle(config, input.groupKey, t.state, nextOf(t.next));
    },

    /** Ends an episode whose model calls failed for good (retries exhausted): the failure is data. */
    async failEpisode(
      input: { configRef: Ref; groupKey: string; stateRef: Ref; reason: string; message: string },
    ): Promise<Advance> {
      const config = await cfg(input.configRef);
      const state = await loadState(input.stateRef);
      let t;
      if (state.phase === "policy") t = applyPolicyFailure(state, input.message);
      else if (state.phase === "tools") {
        t = applyToolResults(
          state,
          toolCallsToRun(state).map((c) => toolResultFromSimulation(c, { ok: false, error: input.message })),
        );
      } else if (state.phase === "judge") {
        const tasks = judgeRoundRequests(state, { model: "failed", hash: sha256Hex });
        t = applyJudgement(state, tasks.slice(0, 1).map((task) => verdictFromError(task, input.message)));
      } else t = { state, next: "end" as const };
      return await settle(config, input.groupKey, t.state, nextOf(t.next));
    },

    /**
     * Rewards and advantages per group (core/rewards.ts), the training batch for the trainer, and
     * the iteration's reward metrics.
     */
    async computeRewards(input: {
      configRef: Ref;
      runName: string;
      iteration: number;
      datasetRef: Ref;
      groups: { taskIndex: number; recordIndex: number; episodes: Ref[] }[];
      validation: boolean;
    }) {
      const config = await cfg(input.configRef);
      const options = rewardOptionsOf(config.cm2);
      const scored = scoreGroups(
        await Promise.all(input.groups.map(async (g) => ({
          taskIndex: g.taskIndex,
          recordIndex: g.recordIndex,
          episodes: await Promise.all(g.episodes.map(async (ref) => ({
            id: ref.sha256.slice(0, 16),
            stateRef: ref,
            state: await loadState(ref),
          }))),
        }))),
        options,
      );
      const rewardsRef = await putJson(store, {
        schema: "cm2.rewards/v1",
        runName: input.runName,
        iteration: input.iteration,
        options,
        groups: scored.groups,
      });
      let batchRef: Ref | null = null;
      if (!input.validation) {
        const batch: Batch = {
          schema: "cm2.batch/v1",
          runId: input.runName,
          iteration: input.iteration,
          samples: scored.samples,
        };
        batchRef = await putJson(store, batch);
      }
      return {
        rewardsRef,
        batchRef,
        meanReward: scored.meanReward,
        itemPassRate: scored.itemPassRate,
        judgeCalls: scored.judgeCalls,
        simulatorCalls: scored.simulatorCalls,
        replayHits: scored.replayHits,
        samples: scored.samples.length,
      };
    },

    /** Stores the iteration's metrics and points `runs/<name>/metrics/it-<n>` at them. */
    async recordMetrics(input: {
      runName: string;
      summary: Record<string, unknown> & { iteration: number; validation: boolean };
      rewardsRef: Ref;
      updateMetrics: UpdateMetrics | null;
    }): Promise<{ metricsRef: Ref }> {
      const metricsRef = await putJson(store, {
        schema: "cm2.metrics/v1",
        ...input.summary,
        rewards: input.rewardsRef,
        update: input.updateMetrics,
      });
      const kind = input.summary.validation ? "val" : "it";
      await store.setName(storeNames.metrics(input.runName, kind, input.summary.iteration), metricsRef);
      return { metricsRef };
    },
  };
}
