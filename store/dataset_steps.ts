/**
 * Dataset steps that read a dataset from the store and write new versions: the rule-based filter and the
 * SFT / RL / held-out split. The CLI (`cm2 data filter`, `cm2 data split`) and the pipeline's activities both
 * run them, so a step means the same wherever it runs.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { FILTER_CRITERIA, type FilterCriterion, filterRecords, type FilterResult } from "../core/filters.ts";
import type { TrajectoryRecord } from "../core/records.ts";
import { splitRecords, type SplitRules } from "../core/split.ts";
import { datasetRef, loadAllRecords, loadManifest, saveDataset } from "./datasets.ts";
import { type ArtifactStore, putJson, type Ref } from "./mod.ts";

/** Records of a stored dataset with what names the version (its manifest), or throws naming what is missing. */
export async function loadDataset(
  store: ArtifactStore,
  name: string,
): Promise<{ records: TrajectoryRecord[]; ref: Ref }> {
  const ref = await datasetRef(store, name);
  if (!ref) throw new Error(`No dataset named ${JSON.stringify(name)} in ${store.url}`);
  return { records: await loadAllRecords(store, await loadManifest(store, ref)), ref };
}

/** The criteria a rule filter applies: all but `disable`; `think_tags` only where the data has `<think>`. */
export function ruleCriteria(
  records: readonly TrajectoryRecord[],
  disable: readonly string[] = [],
  enable: readonly string[] = [],
): { enabled: FilterCriterion[]; traces: boolean } {
  for (const d of [...disable, ...enable]) {
    if (!FILTER_CRITERIA.includes(d as FilterCriterion)) {
      throw new Error(`Unknown criterion ${JSON.stringify(d)}`);
    }
  }
  // Data without reasoning traces would fail think_tags everywhere: skip it unless the data has them.
  const traces = records.some((r) =>
    r.messages.some((m) => m.role === "assistant" && m.content.includes("<think>"))
  );
  const off = [...disable, ...(traces || enable.includes("think_tags") ? [] : ["think_tags"])];
  return { enabled: FILTER_CRITERIA.filter((c) => !off.includes(c)), traces };
}

/** Saves the records a filter kept as a new version of `datasets/<out>`, derived from `parent` by `step`. */
export async function saveFiltered(
  store: ArtifactStore,
  input: {
    source: string;
    kept: readonly TrajectoryRecord[];
    total: number;
    parent: Ref | null;
    step: string;
    out: string;
    allowEmpty?: boolean;
  },
): Promise<{ ref: Ref; version: number }> {
  const { ref, manifest } = await saveDataset(store, input.out, input.kept, {
    sources: [{
      file: input.source,
      format: "dataset",
      imported: input.kept.length,
      errors: input.total - input.kept.length,
    }],
    derivedFrom: { step: input.step, parent: input.parent },
    allowEmpty: input.allowEmpty ?? false,
  });
  return { ref, version: manifest.version ?? 1 };
}

/** Applies the rule filter to `records` (read from `source`) and saves the kept ones as `datasets/<out>`. */
export async function ruleFilterStep(
  store: ArtifactStore,
  input: {
    source: string;
    records: readonly TrajectoryRecord[];
    parent: Ref | null;
    enabled: FilterCriterion[];
    out: string;
    allowEmpty?: boolean;
  },
): Promise<{ result: FilterResult; saved: { ref: Ref; version: number } }> {
  const result = filterRecords(input.records, { criteria: input.enabled });
  const saved = await saveFiltered(store, {
    ...input,
    kept: result.kept,
    total: input.records.length,
    step: `filter:${input.enabled.join("+")}`,
  });
  return { result, saved };
}

/** One part of a split as stored. */
export interface SplitPart {
  name: string;
  version: number;
  ref: Ref;
}

/** The stored split report (`splits/<out>`). */
export interface SplitReport {
  schema: "cm2.split/v1";
  source: { name: string; parent: Ref | null; versionKey: string };
  rules: SplitRules;
  counts: ReturnType<typeof splitRecords>["counts"];
  uuids: { sft: string[]; rl: string[]; heldOut: string[] };
  /** `rl` holds the RL records followed by the held-out ones (a run's `dataset.heldOut` = their count). */
  datasets: { sft: SplitPart | null; rl: SplitPart | null; heldOut: SplitPart | null };
  createdAt: string;
}

/** The version key of a file's content (a stored dataset's is its manifest hash). */
export function contentKey(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * Splits `records` by `rules` into `datasets/<out>-sft`, `<out>-rl` (RL records, then the held-out ones) and
 * `<out>-heldout`, and stores the report under `splits/<out>`. An empty part is not saved.
 */
export async function splitStep(
  store: ArtifactStore,
  input: {
    source: string;
    records: readonly TrajectoryRecord[];
    parent: Ref | null;
    versionKey: string;
    rules: SplitRules;
    out: string;
    now?: Date;
  },
): Promise<{ report: SplitReport; reportRef: Ref }> {
  const { records, rules, out } = input;
  const split = splitRecords(records, rules, input.versionKey);
  const pick = (idx: number[]) => idx.map((i) => records[i]!);
  const save = async (part: string, idx: number[]): Promise<SplitPart | null> => {
    if (idx.length === 0) return null;
    const { ref, manifest } = await saveDataset(store, `${out}-${part}`, pick(idx), {
      sources: [{ file: input.source, format: "dataset", imported: idx.length, errors: 0 }],
      derivedFrom: { step: `split:${part}`, parent: input.parent },
    });
    return { name: `datasets/${out}-${part}`, version: manifest.version ?? 1, ref };
  };
  const report: SplitReport = {
    schema: "cm2.split/v1",
    source: { name: input.source, parent: input.parent, versionKey: input.versionKey },
    rules,
    counts: split.counts,
    uuids: {
      sft: pick(split.sft).map((r) => r.uuid),
      rl: pick(split.rl).map((r) => r.uuid),
      heldOut: pick(split.heldOut).map((r) => r.uuid),
    },
    datasets: {
      sft: await save("sft", split.sft),
      rl: await save("rl", [...split.rl, ...split.heldOut]),
      heldOut: await save("heldout", split.heldOut),
    },
    createdAt: (input.now ?? new Date()).toISOString(),
  };
  const reportRef = await putJson(store, report);
  await store.setName(`splits/${out}`, reportRef);
  return { report, reportRef };
}
