/**
 * Datasets in the artifact store: one blob per record plus a manifest listing their refs, under
 * the pointer `datasets/<name>`. Activities load one record at a time by index.
 *
 * @module
 */
import { z } from "zod";
import { type TrajectoryRecord, TrajectoryRecordSchema } from "../core/records.ts";
import { type ArtifactStore, getJson, putJson, type Ref, RefSchema } from "./mod.ts";

/** The manifest of a stored dataset. */
export const DatasetManifestSchema = z.object({
  schema: z.literal("cm2.dataset/v1"),
  name: z.string(),
  createdAt: z.string(),
  count: z.number().int().min(0),
  records: z.array(RefSchema),
  uuids: z.array(z.string()),
  sources: z.array(z.object({
    file: z.string(),
    format: z.string(),
    imported: z.number().int(),
    errors: z.number().int(),
  })),
  /** What produced this version (import, filter, label …) and from which parent manifest. */
  derivedFrom: z.object({ step: z.string(), parent: RefSchema.nullable() }).optional(),
});

export type DatasetManifest = z.infer<typeof DatasetManifestSchema>;

/** Writes records and a manifest; points `datasets/<name>` at it. Returns the manifest ref. */
export async function saveDataset(
  store: ArtifactStore,
  name: string,
  records: readonly TrajectoryRecord[],
  meta: { sources: DatasetManifest["sources"]; derivedFrom?: DatasetManifest["derivedFrom"]; now?: Date },
): Promise<{ ref: Ref; manifest: DatasetManifest }> {
  const refs: Ref[] = [];
  for (const r of records) refs.push(await putJson(store, r));
  const manifest: DatasetManifest = {
    schema: "cm2.dataset/v1",
    name,
    createdAt: (meta.now ?? new Date()).toISOString(),
    count: records.length,
    records: refs,
    uuids: records.map((r) => r.uuid),
    sources: meta.sources,
    ...(meta.derivedFrom ? { derivedFrom: meta.derivedFrom } : {}),
  };
  const ref = await putJson(store, manifest);
  await store.setName(`datasets/${name}`, ref);
  return { ref, manifest };
}

/** Reads a dataset manifest by ref. */
export function loadManifest(store: ArtifactStore, ref: Ref): Promise<DatasetManifest> {
  return getJson(store, ref, DatasetManifestSchema);
}

/** Resolves `datasets/<name>` to its manifest ref, or undefined. */
export function datasetRef(store: ArtifactStore, name: string): Promise<Ref | undefined> {
  return store.getName(`datasets/${name}`);
}

/** Loads record `index` of a dataset. */
export function loadRecord(
  store: ArtifactStore,
  manifest: DatasetManifest,
  index: number,
): Promise<TrajectoryRecord> {
  const ref = manifest.records[index];
  if (!ref) {
    return Promise.reject(
      new Error(`Dataset ${manifest.name} has no record ${index} (it has ${manifest.count})`),
    );
  }
  return getJson(store, ref, TrajectoryRecordSchema);
}

/** Loads every record of a dataset. */
export async function loadAllRecords(
  store: ArtifactStore,
  manifest: DatasetManifest,
): Promise<TrajectoryRecord[]> {
  const out: TrajectoryRecord[] = [];
  for (let i = 0; i < manifest.count; i++) out.push(await loadRecord(store, manifest, i));
  return out;
}
