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
import {
  type DatasetManifest,
  datasetRef as namedDataset,
  loadAllRecords,
  loadManifest,
  saveDataset,
} from "../store/datasets.ts";
import { type TrajectoryRecord, validateRecord, type ValidationOptions } from "../core/records.ts";
import { promptTokensOf } from "../core/episode.ts";
import { type ArtifactStore, putJson, type Ref } from "../store/mod.ts";
import { canonicalStoreUrl } from "../store/open.ts";

/** What dataset preparation kept and left out, and why. */
export interface DatasetSummary {
  /** Records read (stored, or imported plus the import's errors). */
  records: number;
  /** Records the run trains and validates on. */
  kept: number;
  /** Left out: the record fails validation. */
  invalid: number;
  /** Left out: the record has no checklist. */
  unlabeled: number;
  /** Left out: the record's first prompt is longer than `maxPromptTokens` (estimated tokens). */
  promptTooLong: number;
  maxPromptTokens: number;
}

/** Result of `prepareDataset`. */
export interface PreparedDataset {
  datasetRef: Ref;
  trainCount: number;
  valCount: number;
  /** Absent in histories recorded before it existed. */
  summary?: DatasetSummary;
}

/** One line: how many records were kept and why the others were left out. */
export function describeDataset(s: DatasetSummary): string {
  const out = [
    s.invalid ? `${s.invalid} invalid` : "",
    s.unlabeled ? `${s.unlabeled} without a checklist` : "",
    s.promptTooLong ? `${s.promptTooLong} with a first prompt over ${s.maxPromptTokens} tokens` : "",
  ].filter(Boolean);
  return `${s.kept} of ${s.records} records kept${out.length ? `; left out: ${out.join(", ")}` : ""}`;
}

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
     * Imports the configured dataset (a file, or `datasets/<name>` in the store) and keeps the records that
     * pass the import validation, have checklists and whose first prompt fits `cm2.limits.maxPromptTokens`.
     * What is left out is counted in the returned summary, never dropped silently; a stored dataset that
     * loses records is saved as a derived `run-<name>` version. The last `heldOut` records are for validation.
     */
    async prepareDataset(input: { config: RunConfig }): Promise<PreparedDataset> {
      const spec = input.config.dataset;
      const maxPromptTokens = input.config.cm2.limits.maxPromptTokens;
      const named = spec.path.startsWith("datasets/")
        ? await namedDataset(store, spec.path.slice(9))
        : undefined;
      let loaded: TrajectoryRecord[];
      let invalid = 0;
      let validation: ValidationOptions;
      let sources: DatasetManifest["sources"];
      if (named) {
        // A stored dataset passes the same validation as an import (it may predate a rule).
        const manifest = await loadManifest(store, named);
        const records = await loadAllRecords(store, manifest);
        validation = manifest.validation ?? {};
        loaded = records.filter((r) => validateRecord(r, validation).ok);
        invalid = records.length - loaded.length;
        sources = [{ file: spec.path, format: "dataset", imported: loaded.length, errors: invalid }];
      } else {
        const file = path.isAbsolute(spec.path) ? spec.path : path.join(deps.root, spec.path);
        validation = { allowEmptyToolResponses: spec.allowEmptyToolResponses };
        const report = await importFiles([file], (p) => fs.readFile(p, "utf8"), { validation });
        loaded = report.records;
        invalid = report.errors.length;
        sources = report.files.map((f) => ({
          file: f.file,
          format: f.format ?? "unknown",
          imported: f.imported,
          errors: f.errored,
        }));
      }
      const labeled = loaded.filter((r) => r.checklists.length > 0);
      const kept = labeled.filter((r) => promptTokensOf(r) <= maxPromptTokens);
      const summary: DatasetSummary = {
        records: loaded.length + invalid,
        kept: kept.length,
        invalid,
        unlabeled: loaded.length - labeled.length,
        promptTooLong: labeled.length - kept.length,
        maxPromptTokens,
      };
      if (kept.length === 0) {
        const hint = summary.unlabeled > 0 && labeled.length === 0 ? ": label it first with `cm2 label`" : "";
        throw ApplicationFailure.nonRetryable(
          `Dataset ${spec.path} has no usable record (${describeDataset(summary)})${hint}`,
          "InvalidInput",
        );
      }
      let ref = named;
      if (!ref || kept.length < summary.records) {
        ({ ref } = await saveDataset(store, `run-${input.config.name}`, kept, {
          sources,
          derivedFrom: { step: "prepare", parent: named ?? null },
          validation,
        }));
      }
      const manifest = await loadManifest(store, ref);
      const valCount = Math.min(spec.heldOut, Math.max(0, manifest.count - 1));
      return { datasetRef: ref, trainCount: manifest.count - valCount, valCount, summary };
    },

    /**
     * Resolves the SFT datasets of a config (`sft.dataset`, `sft.heldOut`) to their manifests in the store.
     * A missing one is a non-retryable error naming it and the import command.
     */
    async sftPrepare(input: { config: RunConfig }): Promise<{
      dataset: Ref;
      heldOut: Ref | null;
      count: number;
      heldOutCount: number;
    }> {
      const resolve = async (field: string, name: string) => {
        const ref = await namedDataset(store, name.slice("datasets/".length));
        if (!ref) {
          throw ApplicationFailure.nonRetryable(
            `sft.${field} names ${name}, which is not in the store ${store.url}: import it with ` +
              "`cm2 data import` or make it with `cm2 data split`",
            "InvalidInput",
          );
        }
        return { ref, count: (await loadManifest(store, ref)).count };
      };
      const ds = await resolve("dataset", input.config.sft.dataset);
      const held = input.config.sft.heldOut ? await resolve("heldOut", input.config.sft.heldOut) : null;
      return { dataset: ds.ref, heldOut: held?.ref ?? null, count: ds.count, heldOutCount: held?.count ?? 0 };
    },
  };
}
