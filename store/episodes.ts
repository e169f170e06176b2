/**
 * Episode states in the store without copies (`cm2.episode/v2`). An episode's constant parts go by ref: the
 * dataset record (already a content-addressed blob of the dataset) and the resolved options (one blob shared
 * by every episode of a run); the tools are derived from the record. Each save writes only what changed since
 * the state it was loaded from (its `base`): the new messages and their bookkeeping, the turns from the base's
 * current turn on, and the fields that changed. A save is a full snapshot when the deltas written since the
 * XX
 * 1.5× its delta, and when the episode ends, so that a final state never needs its intermediates (which `cm2 store gc` may then
 * collect, see `store/gc.ts`).
 *
 * Messages and their bookkeeping are append-only in the engine (`core/episode.ts`), and turns before the
 * current one never change, which is what makes the deltas exact. States written by older versions (a whole
 * `EpisodeState`, `version: 1`) still load.
 *
 * @module
 */
import { type EpisodeState, type ResolvedEpisodeOptions, toolsOf } from "../core/episode.ts";
import type { TrajectoryRecord } from "../core/records.ts";
import type { CachedStore } from "./cached.ts";
import type { Ref } from "./mod.ts";

/** The schema tag of stored episode snapshots. */
export const EPISODE_SCHEMA = "cm2.episode/v2";

/**
 * Where an episode belongs (kept in every stored state; `cm2 store gc` and the run viewer read it): its
 * group's store prefix (`runs/<run>/<kind>-<iteration>/task-<k>`) and its workflow id.
 */
export interface EpisodeOwner {
  group: string;
  episode: string;
}

type Mutable = Omit<EpisodeState, "version" | "record" | "options" | "tools" | "messages" | "meta" | "turns">;

/** A snapshot: the whole state, with the record and the options by ref. */
export interface EpisodeSnapshot extends Mutable {
  schema: typeof EPISODE_SCHEMA;
  owner: EpisodeOwner;
  record: Ref;
  options: Ref;
  messages: EpisodeState["messages"];
  meta: EpisodeState["meta"];
  turns: EpisodeState["turns"];
}

/**
 * A delta on `base` (`<sha256>:<bytes>`): the messages and bookkeeping appended since, the turns from the base's
 * current turn on, the top-level fields that changed (`set`; of `metrics` only the changed counters) and those
 * removed (`unset`). Owner, record and options are the snapshot's.
 */
export interface EpisodeDelta {
  schema: typeof DELTA_SCHEMA;
  base: string;
  messages?: EpisodeState["messages"];
  meta?: EpisodeState["meta"];
  turns: EpisodeState["turns"];
  set?: Partial<Mutable>;
  unset?: string[];
}

/** Either stored form. */
export type StoredEpisode = EpisodeSnapshot | EpisodeDelta;

/** The schema tag of deltas. */
export const DELTA_SCHEMA = "cm2.episode/v2-delta";

/** A state as loaded or saved: the value, its ref, and what the next save needs to write a delta. */
export interface EpisodeHandle {
  state: EpisodeState;
  ref: Ref;
  owner: EpisodeOwner;
  /** The record's blob (null for an old v1 state, which embeds its record: the next save stores it). */
  recordRef: Ref | null;
  /** Deltas since the last snapshot and their bytes, the snapshot's bytes (null: an old v1 blob). */
  head: { chain: number; deltaBytes: number; snapshotBytes: number } | null;
}

/**
 * A snapshot is written once the deltas since the last one outweigh it this many times: snapshots then cost at
 * most 1/SNAPSHOT_AFTER of the deltas' bytes (each is paid for by that many delta bytes before it).
 */
const SNAPSHOT_AFTER = 4;

/** Most deltas between snapshots (bounds the reads of a load on a worker that has none of them cached). */
const MAX_CHAIN = 32;

const MUTABLE_KEYS = [
  "phase",
  "turn",
  "assistantSteps",
  "judgedTurns",
  "contextTokens",
  "pendingCalls",
  "toolResults",
  "judgeAnswers",
  "pendingEnd",
  "end",
  "metrics",
] as const satisfies readonly (keyof Mutable)[];

function mutableOf(state: EpisodeState): Mutable {
  const { version: _v, record: _r, options: _o, tools: _t, messages: _m, meta: _mm, turns: _tt, ...rest } =
    state;
  return rest;
}

/** The fields of `next` that differ from `prev` (metrics: only the changed counters), and those removed. */
function diff(prev: Mutable, next: Mutable): { set: Record<string, unknown>; unset: string[] } {
  const set: Record<string, unknown> = {};
  const unset: string[] = [];
  for (const k of MUTABLE_KEYS) {
    const a = prev[k] as unknown;
    const b = next[k] as unknown;
    if (b === undefined) {
      if (a !== undefined) unset.push(k);
    } else if (k === "metrics") {
      const m: Record<string, number> = {};
      for (const [key, v] of Object.entries(next.metrics)) {
        if (prev.metrics[key as keyof typeof prev.metrics] !== v) m[key] = v;
      }
      if (Object.keys(m).length > 0) set.metrics = m;
    } else if (JSON.stringify(a) !== JSON.stringify(b)) set[k] = b;
  }
  return { set, unset };
}

const refOf = (base: string): Ref => {
  const [sha256, bytes] = base.split(":");
  return { uri: `cm2://sha256/${sha256}`, sha256: sha256!, bytes: Number(bytes) };
};

/** Reads and writes stored episode states through a worker's {@linkcode CachedStore}. */
export class EpisodeStates {
  #optionsRefs = new Map<string, Ref>();
  #loaded = new Map<string, EpisodeHandle>();

  constructor(readonly cached: CachedStore, readonly maxLoaded = 2_048) {}

  async #options(options: ResolvedEpisodeOptions): Promise<Ref> {
    const key = JSON.stringify(options);
    let ref = this.#optionsRefs.get(key);
    if (!ref) {
      ref = await this.cached.writeJson(options);
      this.#optionsRefs.set(key, ref);
    }
    return ref;
  }

  /** Keeps `h` (its state is never changed afterwards: the engine's transitions return new states). */
  #remember(h: EpisodeHandle): EpisodeHandle {
    this.#loaded.set(h.ref.sha256, h);
    if (this.#loaded.size > this.maxLoaded) this.#loaded.delete(this.#loaded.keys().next().value!);
    return h;
  }

  /**
   * Saves `state`, as a delta on `base` when there is one and a snapshot is not due. Returns the handle
   * to pass as the next save's base. The caller must not change `state` afterwards (the engine never does:
   * every transition returns a new state).
   */
  async save(
    state: EpisodeState,
    at: { owner: EpisodeOwner; recordRef: Ref | null; base: EpisodeHandle | null },
  ): Promise<EpisodeHandle> {
    const recordRef = at.recordRef ?? await this.cached.writeJson(state.record);
    const base = at.base;
    const b = base?.head ?? null;
    const snapshot = !base || !b || state.phase === "done" || b.chain + 1 > MAX_CHAIN ||
      b.deltaBytes > SNAPSHOT_AFTER * b.snapshotBytes;
    let stored: StoredEpisode;
    if (snapshot) {
      stored = {
        schema: EPISODE_SCHEMA,
        owner: at.owner,
        record: recordRef,
        options: await this.#options(state.options),
        messages: state.messages,
        meta: state.meta,
        turns: state.turns,
        ...mutableOf(state),
      };
    } else {
      // The base as it was saved or loaded (the caller's copy may have been changed since).
      const prev = this.#loaded.get(base.ref.sha256)?.state ?? base.state;
      const from = prev.messages.length;
      const { set, unset } = diff(mutableOf(prev), mutableOf(state));
      stored = {
        schema: DELTA_SCHEMA,
        base: `${base.ref.sha256}:${base.ref.bytes}`,
        ...(state.messages.length > from
          ? { messages: state.messages.slice(from), meta: state.meta.slice(from) }
          : {}),
        turns: state.turns.slice(prev.turn),
        ...(Object.keys(set).length > 0 ? { set } : {}),
        ...(unset.length > 0 ? { unset } : {}),
      };
    }
    const ref = await this.cached.writeJson(stored);
    const head = snapshot
      ? { chain: 0, deltaBytes: 0, snapshotBytes: ref.bytes }
      : { chain: b!.chain + 1, deltaBytes: b!.deltaBytes + ref.bytes, snapshotBytes: b!.snapshotBytes };
    return this.#remember({ state, ref, owner: at.owner, recordRef, head });
  }

  /**
   * Loads a stored state (a snapshot and the deltas after it, or an old whole v1 state). The value is shared
   * with this reader's cache: do not change it (the engine's transitions return new states).
   */
  async load(ref: Ref): Promise<EpisodeHandle> {
    const known = this.#loaded.get(ref.sha256);
    if (known) return known;
    const chain: { ref: Ref; stored: StoredEpisode }[] = [];
    for (let at = ref;;) {
      const stored = await this.cached.readJson<StoredEpisode | (EpisodeState & { schema?: undefined })>(at);
      if (stored.schema === DELTA_SCHEMA) {
        chain.unshift({ ref: at, stored });
        at = refOf(stored.base);
        continue;
      }
      if (stored.schema !== EPISODE_SCHEMA) {
        if (chain.length > 0) {
          throw new Error(`Episode state ${ref.uri} extends a blob that is not a snapshot`);
        }
        return {
          state: stored as EpisodeState,
          ref,
          owner: { group: "", episode: "" },
          recordRef: null,
          head: null,
        };
      }
      chain.unshift({ ref: at, stored });
      break;
    }
    const snap = chain[0]!.stored as EpisodeSnapshot;
    const { schema: _s, owner, record: recordRef, options: optionsRef, messages, meta, turns, ...mutable } =
      snap;
    const state: EpisodeState = {
      version: 1,
      record: await this.cached.memo<TrajectoryRecord>(recordRef),
      options: structuredClone(await this.cached.memo<ResolvedEpisodeOptions>(optionsRef)),
      tools: [],
      messages,
      meta,
      turns,
      ...mutable,
    };
    state.tools = toolsOf(state.record);
    for (const { stored } of chain.slice(1)) {
      const d = stored as EpisodeDelta;
      state.messages.push(...(d.messages ?? []));
      state.meta.push(...(d.meta ?? []));
      state.turns = [...state.turns.slice(0, state.turn), ...d.turns];
      const { metrics, ...set } = d.set ?? {};
      Object.assign(state, set);
      if (metrics) Object.assign(state.metrics, metrics);
      for (const k of d.unset ?? []) delete (state as unknown as Record<string, unknown>)[k];
    }
    const deltas = chain.slice(1);
    const head = {
      chain: deltas.length,
      deltaBytes: deltas.reduce((n, c) => n + c.ref.bytes, 0),
      snapshotBytes: chain[0]!.ref.bytes,
    };
    return this.#remember({ state, ref, owner, recordRef, head });
  }
}
