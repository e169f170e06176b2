/**
 * Datasets in the artifact store: one blob per record plus a manifest listing their refs, under the pointer
 * `datasets/<name>` (the newest version; `datasets/<name>/v<k>` each version). Activities load one record at a
 * time by index.
 *
 * @module
 */
import { z } from "zod";
import { type TrajectoryRecord, TrajectoryRecordSchema } from "../core/records.ts";
import { type ArtifactStore, assertSafeName, getJson, putJson, type Ref, RefSchema } from "./mod.ts";

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
  /** The validation options its records passed (e.g. empty tool responses allowed); a run checks them alike. */
  validation: z.object({ allowEmptyToolResponses: z.boolean().optional() }).optional(),
  /** Version number under this name (1, 2, …; absent before versioning) and the version it replaced. */
  version: z.number().int().positive().optional(),
  previous: RefSchema.nullable().optional(),
});

export type DatasetManifest = z.infer<typeof DatasetManifestSchema>;

/** A dataset that cannot be saved as asked (nothing would be gained, or a name that cannot be stored). */
export class DatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatasetError";
  }
}

/**
 * Writes records and a manifest as a new version of dataset `name`: `datasets/<name>/v<k>` keeps every version
 * reachable, and `datasets/<name>` points at the newest. The name is checked before anything is written. An
 * empty dataset is refused (unless `allowEmpty`), and never replaces a version that has records.
 */
export async function saveDataset(
  store: ArtifactStore,
  name: string,
  records: readonly TrajectoryRecord[],
  meta: {
    sources: DatasetManifest["sources"];
    derivedFrom?: DatasetManifest["derivedFrom"];
    now?: Date;
    allowEmpty?: boolean;
    validation?: DatasetManifest["validation"];
  },
): Promise<{ ref: Ref; manifest: DatasetManifest }> {
  const pointer = `datasets/${name}`;
  try {
    assertSafeName(`${pointer}/v1`);
  } catch (err) {
    throw new DatasetError(
      `Dataset name ${JSON.stringify(name)} cannot be stored: ${(err as Error).message}`,
    );
  }
  const previousRef = await store.getName(pointer);
  const previous = previousRef ? await loadManifest(store, previousRef) : null;
  if (records.length === 0) {
    if (previous && previous.count > 0) {
      throw new DatasetError(
        `Dataset ${name} keeps its ${previous.count} records: the new version would have none`,
      );
    }
    if (!meta.allowEmpty) throw new DatasetError(`Dataset ${name}: no record to save`);
  }
  const refs: Ref[] = [];
  for (const r of records) refs.push(await putJson(store, r));
  const version = (previous?.version ?? (previous ? 1 : 0)) + 1;
  const manifest: DatasetManifest = {
    schema: "cm2.dataset/v1",
    name,
    createdAt: (meta.now ?? new Date()).toISOString(),
    count: records.length,
    records: refs,
    uuids: records.map((r) => r.uuid),
    sources: meta.sources,
    ...(meta.derivedFrom ? { derivedFrom: meta.derivedFrom } : {}),
    ...(meta.validation && Object.keys(meta.validation).length > 0 ? { validation: meta.validation } : {}),
    version,
    previous: previousRef ?? null,
  };
  const ref = await putJson(store, manifest);
  if (previousRef && !previous?.version) await store.setNameIfAbsent(`${pointer}/v1`, previousRef);
  await store.setName(`${pointer}/v${version}`, ref);
  await store.setName(pointer, ref);
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
