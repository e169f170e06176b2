/**
 * What the viewer shows, read from the store as the run wrote it (never recomputed): the metrics of each iteration
 * (`runs/<run>/metrics/<kind>-<n>`, `cm2.metrics/v1`), the iteration's rewards (`cm2.rewards/v1`: groups, each
 * episode's reward, turn scores, end reason and state ref), and an episode's stored state (`store/episodes.ts`).
 * A run's status comes from Temporal when a client is given and the run's workflow is found.
 *
 * @module
 */
import type { Client } from "@temporalio/client";
import type { LabelReport } from "../activities/labeling.ts";
import { redactedConfig, type RunConfig } from "../core/config.ts";
import type { EpisodeState } from "../core/episode.ts";
import { type JudgeNotes, judgeNotesPrefix } from "../core/judge.ts";
import type { Batch } from "../core/trainer_contract.ts";
import { storeNames, workflowIds } from "../core/names.ts";
import { CachedStore } from "../store/cached.ts";
import { EpisodeStates } from "../store/episodes.ts";
import { type ArtifactStore, assertSafeName, type Ref } from "../store/mod.ts";
import type { IterationSummary } from "../workflows/training.ts";
import type { EvalRun } from "../workflows/eval.ts";

/**
 * An iteration's stored metrics (`cm2.metrics/v1`, written by `recordMetrics`): the workflow's summary (fields
 * added later are absent in older runs) and the refs and update metrics beside it.
 */
export interface IterationMetrics extends Omit<IterationSummary, "metricsRef"> {
  schema: "cm2.metrics/v1";
  rewards: Ref;
  /** The batch the update trained on (absent in validation passes and older runs). */
  batch?: Ref;
  /** The config the iteration ran with (absent in older runs). */
  config?: Ref;
  update: Record<string, number> | null;
}

/** Per iteration, what the rewards blob says beyond the metrics: failed episodes by end reason, turn scores. */
export interface IterationOutcomes {
  iteration: number;
  validation: boolean;
  /** Episodes that failed (`ok` false), by end reason. */
  failedBy: Record<string, number>;
  /** Mean score of turn t over the episodes that reached it (`turnScores`, as stored). */
  turnPass: (number | null)[];
}

/** One episode of a group, as the rewards blob holds it. */
export interface ScoredEpisode {
  state: Ref;
  ok: boolean;
  endReason: string;
  reward: number;
  turnScores: number[];
  /** What each item paid, per turn (`EpisodeAdvantages.items`; absent in older runs). */
  items?: { step: number; reward: number }[][];
  excluded: boolean;
  steps: number;
}

/** One task's group. */
export interface ScoredGroup {
  taskIndex: number;
  recordIndex: number;
  uuid: string;
  episodes: ScoredEpisode[];
  stats: { trajectory: { mean: number; std: number; support: number } };
}

/** An iteration's rewards (`cm2.rewards/v1`). */
export interface IterationRewards {
  schema: "cm2.rewards/v1";
  runName: string;
  iteration: number;
  options: Record<string, unknown>;
  groups: ScoredGroup[];
}

/** A row of the runs list. */
export interface RunRow {
  name: string;
  /** Temporal's status of `run/<name>` (`RUNNING`, `COMPLETED`, …), or null when unknown. */
  status: string | null;
  /** Training iterations with stored metrics. */
  iterations: number;
  lastReward: number | null;
  lastValidation: number | null;
  started: string | null;
}

/** Training or validation. */
export type IterationKind = "it" | "val";

/** A user-supplied name segment under `prefix`, checked like a store name; otherwise a 404 naming `what`. */
function checkSegment(name: string, prefix: string, what: string): string {
  try {
    if (name.includes("/")) throw new Error("a segment");
    assertSafeName(`${prefix}/${name}`);
  } catch {
    throw new ViewerError(404, `no ${what} ${JSON.stringify(name)}`);
  }
  return name;
}

/** A user-supplied run name, checked like a store name segment (the viewer never reads outside `runs/`). */
export function checkRunName(name: string): string {
  return checkSegment(name, "runs", "run");
}

/** A page that cannot be shown: its HTTP status and a message that names what is missing. */
export class ViewerError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Reads runs, iterations and episodes from one store (blobs are immutable: read once, kept). */
export class RunData {
  readonly #cached: CachedStore;
  readonly #states: EpisodeStates;

  constructor(readonly store: ArtifactStore, public temporal: Client | null = null) {
    this.#cached = new CachedStore(store);
    this.#states = new EpisodeStates(this.#cached, 256);
  }

  /** Every run with stored metrics or checkpoints, newest names last. */
  async runs(): Promise<RunRow[]> {
    const names = await this.store.listNames("runs/");
    const runs = [...new Set(names.map((n) => n.split("/")[1]!))].sort();
    return await Promise.all(runs.map(async (name) => {
      const { train, val } = await this.metrics(name);
      const status = await this.status(name);
      return {
        name,
        status: status?.status ?? null,
        started: status?.started ?? null,
        iterations: train.length,
        lastReward: train.at(-1)?.meanReward ?? null,
        lastValidation: val.at(-1)?.meanReward ?? null,
      };
    }));
  }

  /** Temporal's view of the run's workflow, or null (no client, or no such workflow). */
  async status(name: string): Promise<{ status: string; started: string } | null> {
    if (!this.temporal) return null;
    try {
      const d = await this.temporal.workflow.getHandle(workflowIds.run(name)).describe();
      return { status: d.status.name, started: d.startTime.toISOString() };
    } catch {
      return null;
    }
  }

  /** The run's iteration metrics, training and validation, each sorted by iteration. */
  async metrics(run: string): Promise<{ train: IterationMetrics[]; val: IterationMetrics[] }> {
    checkRunName(run);
    const prefix = `runs/${run}/metrics/`;
    const names = await this.store.listNames(prefix);
    const all = await Promise.all(names.map(async (n) => {
      const ref = await this.store.getName(n);
      return ref ? await this.#cached.readJson<IterationMetrics>(ref) : null;
    }));
    const got = all.filter((m): m is IterationMetrics => m !== null && m.schema === "cm2.metrics/v1");
    const by = (a: IterationMetrics, b: IterationMetrics) => a.iteration - b.iteration;
    return {
      train: got.filter((m) => !m.validation).sort(by),
      val: got.filter((m) => m.validation).sort(by),
    };
  }

  /**
   * The config of the run's last iteration that recorded one, secrets redacted (`redactedConfig`), or null.
   * With `env`, each role says whether its key variable is set here; without, the key's state is left out.
   */
  async config(list: IterationMetrics[], env?: (name: string) => string | undefined): Promise<unknown> {
    const ref = list.findLast((m) => m.config)?.config;
    if (!ref) return null;
    const shown = redactedConfig(await this.#cached.readJson<RunConfig>(ref), env ?? (() => undefined)) as {
      models: Record<string, { apiKey?: string }>;
    };
    if (!env) { for (const role of Object.values(shown.models)) delete role.apiKey; }
    return shown;
  }

  /** Failed episodes by end reason and per-turn scores of every iteration, from the stored rewards. */
  async outcomes(list: IterationMetrics[]): Promise<IterationOutcomes[]> {
    return await Promise.all(list.map(async (m) => {
      const rewards = await this.#cached.readJson<IterationRewards>(m.rewards);
      const failedBy: Record<string, number> = {};
      const sums: number[] = [];
      const counts: number[] = [];
      for (const g of rewards.groups) {
        for (const e of g.episodes) {
          if (!e.ok) failedBy[e.endReason] = (failedBy[e.endReason] ?? 0) + 1;
          e.turnScores.forEach((x, t) => {
            sums[t] = (sums[t] ?? 0) + x;
            counts[t] = (counts[t] ?? 0) + 1;
          });
        }
      }
      const turnPass = sums.map((x, t) => (counts[t] ? x / counts[t]! : null));
      return { iteration: m.iteration, validation: m.validation, failedBy, turnPass };
    }));
  }

  /** The advantage of each assistant step of an episode, by message index, from the iteration's batch. */
  async advantages(metrics: IterationMetrics, stateRef: Ref): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    if (!metrics.batch) return out;
    const batch = await this.#cached.readJson<Batch>(metrics.batch);
    // A sample's episode id is its final state's hash prefix (`activities/rewards.ts`).
    const sample = batch.samples.find((x) => stateRef.sha256.startsWith(x.episodeId));
    for (const a of sample?.advantages ?? []) out.set(a.messageIndex, a.advantage);
    return out;
  }

  /** One iteration's metrics and rewards. */
  async iteration(
    run: string,
    kind: IterationKind,
    n: number,
  ): Promise<{ metrics: IterationMetrics; rewards: IterationRewards }> {
    checkRunName(run);
    const ref = await this.store.getName(storeNames.metrics(run, kind, n));
    if (!ref) {
      throw new ViewerError(404, `run ${run} has no ${kind === "val" ? "validation" : "iteration"} ${n}`);
    }
    const metrics = await this.#cached.readJson<IterationMetrics>(ref);
    const rewards = await this.#cached.readJson<IterationRewards>(metrics.rewards);
    return { metrics, rewards };
  }

  /** One episode: its scores and its stored state (messages, turns with verdicts, the record's checklists). */
  async episode(
    run: string,
    kind: IterationKind,
    n: number,
    task: number,
    ep: number,
  ): Promise<EpisodeView> {
    const { metrics, rewards } = await this.iteration(run, kind, n);
    const group = rewards.groups.find((g) => g.taskIndex === task);
    const scored = group?.episodes[ep];
    if (!group || !scored) {
      throw new ViewerError(404, `${kind}-${n} of run ${run} has no task ${task} episode ${ep}`);
    }
    const [{ state, owner }, advantages, tokens] = await Promise.all([
      this.#states.load(scored.state),
      this.advantages(metrics, scored.state),
      kind === "it" ? this.tokens(run, n, scored.state) : new Map<number, StepTokens>(),
    ]);
    const notes = owner.group ? await this.notes(owner.group, owner.episode) : [];
    return {
      group,
      scored,
      state,
      advantages,
      notes,
      tokens,
      workflowId: workflowIds.episode(run, n, task, ep, kind),
    };
  }

  /** The judge's notes of an episode's judge calls (`<group>/notes/<ep>/…`, written by `judgeCall`). */
  async notes(group: string, episode: string): Promise<JudgeNotes[]> {
    const names = await this.store.listNames(judgeNotesPrefix(group, episode));
    const all = await Promise.all(names.map(async (n) => {
      const ref = await this.store.getName(n);
      return ref ? await this.#cached.readJson<JudgeNotes>(ref) : null;
    }));
    return all.filter((x): x is JudgeNotes => x !== null);
  }

  /**
   * The per-token record of an episode's trained steps, by message index, from the iteration's checkpoint
   * (the manifest's `tokens`, written by the trainer; empty for older checkpoints or an untrained episode).
   */
  async tokens(run: string, n: number, stateRef: Ref): Promise<Map<number, StepTokens>> {
    const out = new Map<number, StepTokens>();
    const ref = await this.store.getName(storeNames.checkpoint(run, n));
    if (!ref) return out;
    const manifest = await this.#cached.readJson<{ tokens?: Ref }>(ref);
    if (!manifest.tokens) return out;
    const record = await this.#cached.readJson<TokenRecord>(manifest.tokens);
    const sample = record.samples.find((x) => stateRef.sha256.startsWith(x.episodeId));
    for (const step of sample?.steps ?? []) out.set(step.messageIndex, { ...step, vetoed: sample!.vetoed });
    return out;
  }

  /**
   * Benchmark scores of the run's checkpoints (`cm2 eval --run`, or the run's own `eval.every`), from the
   * evaluations filed under the run (`runs/<run>/evals/it-<n>/…`, `cm2.eval-run/v1`), by iteration.
   */
  async evals(run: string): Promise<CheckpointScore[]> {
    checkRunName(run);
    const names = await this.store.listNames(`runs/${run}/evals/`);
    const out: CheckpointScore[] = [];
    for (const n of names) {
      const m = /\/evals\/it-(\d+)\/([^/]+)$/.exec(n);
      const ref = m ? await this.store.getName(n) : undefined;
      if (!m || !ref) continue;
      const rec = await this.#cached.readJson<EvalRun>(ref);
      if (rec.schema !== "cm2.eval-run/v1") continue;
      for (const row of rec.summary) {
        out.push({
          iteration: Number(m[1]),
          bench: row.bench,
          category: row.category,
          tasks: row.tasks,
          trials: row.trials,
          score: row.score,
          ci95: row.ci95,
          failures: Object.values(row.failures).reduce((a, b) => a + b, 0),
          workflowId: `eval/${rec.policy.key}/${rec.bench}/${m[2]!.slice(rec.bench.length + 1)}`,
        });
      }
    }
    return out.sort((a, b) =>
      a.iteration - b.iteration || `${a.bench}/${a.category}`.localeCompare(`${b.bench}/${b.category}`)
    );
  }

  /** The labeling reports in the store (`labeling/<out>/report`), by output dataset name. */
  async labelingReports(): Promise<string[]> {
    const names = await this.store.listNames("labeling/");
    return names.filter((n) => n.endsWith("/report")).map((n) =>
      n.slice("labeling/".length, -"/report".length)
    );
  }

  /** One labeling report. */
  async labelingReport(out: string): Promise<LabelReport> {
    checkSegment(out, "labeling", "labeling report");
    const ref = await this.store.getName(`labeling/${out}/report`);
    if (!ref) throw new ViewerError(404, `no labeling report for ${out}`);
    return await this.#cached.readJson<LabelReport>(ref);
  }

  /**
   * One task (by record uuid) in every iteration and validation pass of the given runs that sampled it, in run
   * order then iteration order; each with its group and the stored state of every episode.
   */
  async taskAcross(runs: string[], uuid: string): Promise<TaskAcross[]> {
    const out: TaskAcross[] = [];
    for (const run of runs) {
      const { train, val } = await this.metrics(run);
      for (const [kind, list] of [["val", val], ["it", train]] as const) {
        for (const m of list) {
          const rewards = await this.#cached.readJson<IterationRewards>(m.rewards);
          for (const group of rewards.groups.filter((g) => g.uuid === uuid)) {
            const states = await Promise.all(
              group.episodes.map(async (e) => (await this.#states.load(e.state)).state),
            );
            out.push({ run, kind, n: m.iteration, policyVersion: m.policyVersion, group, states });
          }
        }
      }
    }
    return out;
  }
}

/** One benchmark category's score of one checkpoint of a run. */
export interface CheckpointScore {
  iteration: number;
  bench: string;
  category: string;
  tasks: number;
  trials: number;
  score: number;
  ci95: [number, number];
  /** Trials that could not be graded (counted as 0). */
  failures: number;
  workflowId: string;
}

/** What the episode page shows. */
export interface EpisodeView {
  group: ScoredGroup;
  scored: ScoredEpisode;
  state: EpisodeState;
  /** Advantage per assistant message index (empty: not in a batch, e.g. validation, or an older run). */
  advantages: Map<number, number>;
  /** The judge's reasoning per judge call (empty: cached verdicts, or an older run). */
  notes: JudgeNotes[];
  /** Per trained assistant step (by message index), its tokens as the update saw them. */
  tokens: Map<number, StepTokens>;
  workflowId: string;
}

/** One assistant step in the trainer's per-token record (the checkpoint manifest's `tokens`, version 1). */
export interface StepTokens {
  messageIndex: number;
  tokens: string[];
  tokenIds: number[];
  advantage: number[];
  /** The serving stack's log-prob of each token (null: not known). */
  rolloutLogprob: (number | null)[];
  /** The trainer's log-prob before the update. */
  oldLogprob: number[];
  /** The truncated importance weight the loss used (null: rollout correction off). */
  isWeight: number[] | null;
  /** The sample was vetoed by rollout correction (null: correction off). */
  vetoed: boolean | null;
}

/** The trainer's per-token record of one update. */
export interface TokenRecord {
  version: 1;
  isCap: number | null;
  isVeto: number | null;
  /** Samples past the trainer's token cap were left out. */
  truncated?: boolean;
  samples: { episodeId: string; vetoed: boolean | null; steps: Omit<StepTokens, "vetoed">[] }[];
}

/** A task's group in one iteration of one run, with its episodes' states. */
export interface TaskAcross {
  run: string;
  kind: IterationKind;
  n: number;
  /** The policy version after that iteration's update (validation: the version it validated). */
  policyVersion: number;
  group: ScoredGroup;
  states: EpisodeState[];
}
