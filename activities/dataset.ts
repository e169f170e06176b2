/**
 * Run preparation activities: storing the run config (after checking that it names this worker's store) and
 * preparing the dataset (importing a file, or naming a stored dataset; keeping records with checklists; the
 * held-out split).
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { RunConfig } from "../core/config.ts";
import { importFiles } from "../core/importers/mod.ts";
import { datasetRef as namedDataset, loadAllRecords, loadManifest, saveDataset } from "../store/datasets.ts";
import { validateRecord } from "../core/records.ts";
import { type ArtifactStore, putJson, type Ref } from "../store/mod.ts";
import { canonicalStoreUrl } from "../store/open.ts";

/** What the run preparation activities need. */
export interface DatasetDeps {
  store: ArtifactStore;
  /** Root that relative dataset paths and store URLs in configs resolve against. */
  root: string;
}

/** Builds the run preparation activities. */
export function createDatasetActivities(deps: DatasetDeps) {
  const { store } = deps;
  return {
    /**
     * Stores a run config (workflows pass the ref so histories stay small) and returns the store's URL.
     * A config whose `store.url` names another store than this worker's is refused: the trainer would
     * look for the batch in the wrong place.
     */
    async putConfig(input: { config: RunConfig }): Promise<{ configRef: Ref; storeUrl: string }> {
      let wanted: string;
      try {
        wanted = canonicalStoreUrl(input.config.store.url, deps.root);
      } catch (err) {
        throw ApplicationFailure.nonRetryable((err as Error).message, "InvalidInput");
      }
      if (wanted !== store.url) {
        throw ApplicationFailure.nonRetryable(
          `Run ${input.config.name} wants store.url ${wanted}, but this worker serves ${store.url}: ` +
            `start the workers with \`--store ${input.config.store.url}\` or change the config`,
          "InvalidInput",
        );
      }
      return { configRef: await putJson(store, input.config), storeUrl: store.url };
    },

    /**
     * Imports the configured dataset (a file, or `datasets/<name>` in the store), keeps the records that pass
     * the import validation and have checklists, stores them, and splits off the last `heldOut` records for
     * validation.
     */
    async prepareDataset(
      input: { config: RunConfig },
    ): Promise<{ datasetRef: Ref; trainCount: number; valCount: number }> {
      const spec = input.config.dataset;
      let ref = spec.path.startsWith("datasets/") ? await namedDataset(store, spec.path.slice(9)) : undefined;
      if (ref) {
        // A stored dataset passes the same validation as an import (it may predate a rule): what fails it, or has
        // no checklist, is left out of a derived `run-<name>` version, and the count says so.
        const manifest = await loadManifest(store, ref);
        const records = await loadAllRecords(store, manifest);
        const kept = records.filter((r) =>
          validateRecord(r, manifest.validation ?? {}).ok && r.checklists.length > 0
        );
        if (kept.length === 0) {
          throw ApplicationFailure.nonRetryable(
            `Dataset ${spec.path} has no valid record with a checklist (${records.length} stored)`,
            "InvalidInput",
          );
        }
        if (kept.length < records.length) {
          ({ ref } = await saveDataset(store, `run-${input.config.name}`, kept, {
            sources: [{
              file: spec.path,
              format: "dataset",
              imported: kept.length,
              errors: records.length - kept.length,
            }],
            derivedFrom: { step: "prepare", parent: ref },
            ...(manifest.validation ? { validation: manifest.validation } : {}),
          }));
        }
      }
      if (!ref) {
        const file = path.isAbsolute(spec.path) ? spec.path : path.join(deps.root, spec.path);
        const validation = { allowEmptyToolResponses: spec.allowEmptyToolResponses };
        const report = await importFiles([file], (p) => fs.readFile(p, "utf8"), { validation });
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
          validation,
        }));
      }
      const manifest = await loadManifest(store, ref);
      const valCount = Math.min(spec.heldOut, Math.max(0, manifest.count - 1));
      return { datasetRef: ref, trainCount: manifest.count - valCount, valCount };
    },
  };
}
