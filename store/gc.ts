/**
 * `cm2 store gc`: collects the intermediate episode states of finished iterations.
 *
 * The retention rule: an episode state (`store/episodes.ts`) that is not final — every delta, and every
 * snapshot whose phase is not `done` — may be collected once its iteration's metrics are stored
 * (`runs/<run>/metrics/<kind>-<n>`, written after the iteration's episodes are final and its rewards stored).
 * Kept always: final states (snapshots, so they never need an intermediate), rewards, batches, metrics,
 * checkpoints, datasets, configs, caches, and everything of iterations still running or interrupted. A Temporal
 * replay reads no blob; the run viewer reads final states, rewards and metrics only.
 *
 * Old whole (v1) states carry no owner and are kept. Blobs over 4 MiB are never states and are not read.
 *
 * @module
 */
import { storeNames } from "../core/names.ts";
import { DELTA_SCHEMA, EPISODE_SCHEMA, type StoredEpisode } from "./episodes.ts";
import type { ArtifactStore, Ref } from "./mod.ts";

/** What a collection found (and removed, unless a dry run). */
export interface GcReport {
  dryRun: boolean;
  scannedBlobs: number;
  scannedBytes: number;
  states: number;
  finalStates: number;
  collectable: number;
  collectableBytes: number;
  /** States kept because their iteration has no metrics yet (running, paused, or interrupted). */
  keptUnfinished: number;
  deleted: number;
  /** Per iteration (`<run>/<kind>-<n>`): states collected and their bytes. */
  byIteration: Record<string, { states: number; bytes: number }>;
}

const MAX_STATE_BYTES = 4 * 2 ** 20;
const GROUP_RE = /^runs\/(.+)\/([a-z]+)-(\d+)\/task-\d+$/;

/** The iteration a group prefix belongs to (`runs/<run>/<kind>-<n>/task-<k>`), or null. */
export function iterationOfGroup(group: string): { run: string; kind: string; iteration: number } | null {
  const m = GROUP_RE.exec(group);
  return m ? { run: m[1]!, kind: m[2]!, iteration: Number(m[3]) } : null;
}

/** Scans the store and removes (or, with `dryRun`, only counts) what the retention rule allows. */
export async function collectGarbage(
  store: ArtifactStore,
  opts: { dryRun: boolean; progress?: (scanned: number) => void },
): Promise<GcReport> {
  const report: GcReport = {
    dryRun: opts.dryRun,
    scannedBlobs: 0,
    scannedBytes: 0,
    states: 0,
    finalStates: 0,
    collectable: 0,
    collectableBytes: 0,
    keptUnfinished: 0,
    deleted: 0,
    byIteration: {},
  };
  const decoder = new TextDecoder();
  /** Stored states by sha256: the snapshot's owner group and whether it is final (deltas: their base). */
  const snapshots = new Map<string, { group: string; final: boolean }>();
  const deltas = new Map<string, { base: string; ref: Ref }>();
  const snapshotRefs = new Map<string, Ref>();
  for await (const ref of store.listBlobs()) {
    report.scannedBlobs++;
    report.scannedBytes += ref.bytes;
    if (report.scannedBlobs % 1000 === 0) opts.progress?.(report.scannedBlobs);
    if (ref.bytes > MAX_STATE_BYTES || ref.bytes < 20) continue;
    const data = await store.get(ref).catch(() => null);
    if (!data || data[0] !== 0x7b) continue; // states are JSON objects
    const head = decoder.decode(data.subarray(0, 40));
    if (!head.includes(EPISODE_SCHEMA)) continue;
    const stored = JSON.parse(decoder.decode(data)) as StoredEpisode;
    report.states++;
    if (stored.schema === DELTA_SCHEMA) deltas.set(ref.sha256, { base: stored.base.split(":")[0]!, ref });
    else if (stored.schema === EPISODE_SCHEMA) {
      snapshots.set(ref.sha256, { group: stored.owner.group, final: stored.phase === "done" });
      snapshotRefs.set(ref.sha256, ref);
      if (stored.phase === "done") report.finalStates++;
    }
  }
  const groupOf = (sha: string): string | null => {
    for (let at = sha, hops = 0; hops < 64; hops++) {
      const s = snapshots.get(at);
      if (s) return s.group;
      const d = deltas.get(at);
      if (!d) return null;
      at = d.base;
    }
    return null;
  };
  const finished = new Map<string, boolean>();
  const isFinished = async (group: string) => {
    const it = iterationOfGroup(group);
    if (!it) return false;
    const key = `${it.run}/${it.kind}-${it.iteration}`;
    if (!finished.has(key)) {
      finished.set(
        key,
        (await store.getName(storeNames.metrics(it.run, it.kind, it.iteration))) !== undefined,
      );
    }
    return finished.get(key)!;
  };
  const candidates: { ref: Ref; group: string }[] = [];
  for (const [sha, s] of snapshots) {
    if (!s.final) candidates.push({ ref: snapshotRefs.get(sha)!, group: s.group });
  }
  for (const [sha, d] of deltas) {
    const group = groupOf(sha);
    if (group !== null) candidates.push({ ref: d.ref, group });
  }
  for (const c of candidates) {
    if (!(await isFinished(c.group))) {
      report.keptUnfinished++;
      continue;
    }
    const it = iterationOfGroup(c.group)!;
    const key = `${it.run}/${it.kind}-${it.iteration}`;
    const entry = report.byIteration[key] ??= { states: 0, bytes: 0 };
    entry.states++;
    entry.bytes += c.ref.bytes;
    report.collectable++;
    report.collectableBytes += c.ref.bytes;
    if (!opts.dryRun) {
      await store.deleteBlob(c.ref);
      report.deleted++;
    }
  }
  return report;
}
