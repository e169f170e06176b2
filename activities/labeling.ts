/**
 * Activities of checklist labeling: one labeler call per activity ({@linkcode labelAttempt}), with
 * the result of every (record uuid, prompt version, variant) kept under a first-writer-wins named
 * pointer that is read before any call, so a resumed or re-run labeling never pays twice for a
 * finished record.
 *
 * Store layout (names): `labels/<prompt version>/<uuid>/v<k>/attempt-<a>` per call and
 * `labels/<prompt version>/<uuid>/v<k>/result` per finished (labeled or rejected) record-variant;
 * `labeling/<out>/report` for the report of the output dataset `datasets/<out>`.
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import { createHash } from "node:crypto";
import { z } from "zod";
import type { RunConfig } from "../core/config.ts";
import {
  addRepairs,
  checkLabelText,
  formatLabelIssue,
  LABEL_PROMPT_VERSION,
  labelingMessages,
  type LabelIssue,
  type PriorAttempt,
  type RepairCounts,
} from "../core/labeling.ts";
import { type ChatRequest, type ChatResult, LlmError } from "../core/llm_types.ts";
import { type ChecklistVariant, type TrajectoryRecord, TurnBlockSchema } from "../core/records.ts";
import { jsonSchemaOf } from "../llm/structured.ts";
import { costOf } from "../llm/usage.ts";
import {
  DatasetError,
  type DatasetManifest,
  datasetRef,
  loadManifest,
  loadRecord,
  saveDataset,
} from "../store/datasets.ts";
import { type ArtifactStore, getJson, putJson, type Ref } from "../store/mod.ts";
import { labelerPrices, type ModelFactory, toFailure } from "./common.ts";
import type { CachedStore } from "../store/cached.ts";

/** What the labeling activities need. */
export interface LabelingDeps {
  store: ArtifactStore;
  /** The worker's caches over the store (first-writer-wins names). */
  cached: CachedStore;
  models: ModelFactory;
}

/** Token counts of labeler calls. */
export interface LabelUsage {
  promptTokens: number;
  completionTokens: number;
}

/** One stored labeler call (`labels/…/attempt-<a>`). */
export interface LabelAttemptBlob {
  schema: "cm2.label-attempt/v1";
  uuid: string;
  variant: number;
  attempt: number;
  promptVersion: string;
  model: string;
  /** The answer verbatim (empty when the call itself failed for good). */
  output: string;
  finishReason: ChatResult["finishReason"] | "failed";
  ok: boolean;
  errors: LabelIssue[];
  repairs: RepairCounts;
  usage: LabelUsage;
  /** Cost at the prices configured when the call was made; null without prices. */
  costUsd: number | null;
  checklist?: ChecklistVariant;
}

/** One finished record-variant (`labels/…/result`): labeled with its checklist, or rejected with reasons. */
export interface LabelResultBlob {
  schema: "cm2.label/v1";
  uuid: string;
  variant: number;
  promptVersion: string;
  model: string;
  status: "labeled" | "rejected";
  attempts: number;
  attemptRefs: Ref[];
  checklist?: ChecklistVariant;
  /** Repairs applied to the accepted answer. */
  repairs: RepairCounts;
  /** Why it was rejected: the problems of the last attempt (formatted). Empty when labeled. */
  reasons: string[];
  /** Problems of every failed attempt, in order (formatted, at most 10 each). */
  attemptErrors: string[][];
  usage: LabelUsage;
  costUsd: number | null;
}

/** Small facts about a finished record-variant, for the workflow. */
export interface LabelOutcome {
  status: "labeled" | "rejected";
  attempts: number;
  repairs: RepairCounts;
  /** First reasons of a rejection (at most 5). */
  reasons: string[];
  resultRef: Ref;
  /** True when the result was already in the store (this run made no call for it). */
  cached: boolean;
}

/** Input of {@linkcode labelAttempt}. */
export interface LabelAttemptInput {
  configRef: Ref;
  datasetRef: Ref;
  index: number;
  variant: number;
  attempt: number;
  maxAttempts: number;
  promptVersion: string;
  weightRepairTolerance: number;
  /** Only look up a finished result; make no call (used while the run is over budget). */
  lookupOnly?: boolean;
}

/** Output of {@linkcode labelAttempt}. */
export interface LabelAttemptOutput {
  uuid: string;
  /** The record-variant is finished (outcome set), or another attempt is needed (errors set). */
  final: boolean;
  outcome?: LabelOutcome;
  /** `lookupOnly` and nothing stored yet. */
  pending?: boolean;
  /** The first problems of this attempt (formatted, at most 5). */
  errors: string[];
  /** Whether this activity paid for a model call (false for stored attempts and results). */
  fresh: boolean;
  usage: LabelUsage;
  costUsd: number;
}

/** Input of {@linkcode labelFinish}. */
export interface LabelFinishInput {
  configRef: Ref;
  datasetRef: Ref;
  /** Name of the input dataset (for provenance). */
  dataset: string;
  out: string;
  promptVersion: string;
  variants: number;
  /** Records considered (the first `count` of the dataset). */
  count: number;
  /** Jobs that failed for good this run (model unreachable, request refused): no result stored. */
  failures: { index: number; variant: number; reason: string }[];
  /** Failures beyond the ones listed. */
  failedUnlisted: number;
  thisRun: { calls: number; promptTokens: number; completionTokens: number; costUsd: number };
}

/** The labeling summary printed by `cm2 label`; every count is computed from the store. */
export interface LabelSummary {
  out: string;
  dataset: string;
  promptVersion: string;
  /** Records considered and variants asked per record. */
  records: number;
  variants: number;
  /** Record-variants labeled (with a valid checklist), of which repaired, and repairs by kind. */
  labeled: number;
  repaired: number;
  repairs: RepairCounts;
  /** Record-variants rejected after every attempt, with reasons in the report. */
  rejected: number;
  /** Record-variants without a result because their calls failed for good; a re-run retries them. */
  failed: number;
  /** Record-variants not started (the run was stopped). */
  skipped: number;
  /** Records in the output dataset (at least one labeled variant). */
  labeledRecords: number;
  /** Labeler calls behind the stored results (all runs), and their tokens. */
  attempts: number;
  tokens: LabelUsage;
  /** Estimated cost of those tokens at the configured prices; null without prices. */
  costUsd: number | null;
  /** What this run itself spent (stored results cost nothing again). */
  thisRun: { calls: number; promptTokens: number; completionTokens: number; costUsd: number | null };
  datasetRef: Ref;
  reportRef: Ref;
}

/** The labeling report blob (`labeling/<out>/report`): the summary plus every rejection and failure. */
export interface LabelReport extends Omit<LabelSummary, "reportRef"> {
  schema: "cm2.label-report/v1";
  parent: Ref;
  createdAt: string;
  rejections: { uuid: string; index: number; variant: number; attempts: number; reasons: string[] }[];
  failures: { uuid: string; index: number; variant: number; reason: string }[];
  results: { uuid: string; variant: number; status: "labeled" | "rejected"; ref: Ref }[];
}

const LABEL_JSON_SCHEMA = jsonSchemaOf(z.array(TurnBlockSchema));

/** A store-name segment for a record uuid: the uuid itself when safe, else a hash of it. */
export function uuidSegment(uuid: string): string {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$/.test(uuid)
    ? uuid
    : `h-${createHash("sha256").update(uuid).digest("hex").slice(0, 40)}`;
}

/** Pointer names of one record-variant's stored labels. */
export const labelNames = {
  base: (promptVersion: string, uuid: string, variant: number) =>
    `labels/${promptVersion}/${uuidSegment(uuid)}/v${variant}`,
  result: (promptVersion: string, uuid: string, variant: number) =>
    `${labelNames.base(promptVersion, uuid, variant)}/result`,
  attempt: (promptVersion: string, uuid: string, variant: number, attempt: number) =>
    `${labelNames.base(promptVersion, uuid, variant)}/attempt-${attempt}`,
  report: (out: string) => `labeling/${out}/report`,
};

/** The semantic idempotency key of one labeler call (the same in every run). */
export function labelCallKey(promptVersion: string, uuid: string, variant: number, attempt: number): string {
  return `label/${promptVersion}/${uuid}/v${variant}/attempt-${attempt}`;
}

const ZERO: LabelUsage = { promptTokens: 0, completionTokens: 0 };

function outcomeOf(result: LabelResultBlob, resultRef: Ref, cached: boolean): LabelOutcome {
  return {
    status: result.status,
    attempts: result.attempts,
    repairs: result.repairs,
    reasons: result.reasons.slice(0, 5),
    resultRef,
    cached,
  };
}

/**
 * Builds the labeling activities over their dependencies. Long as a whole because it is a factory: each
 * activity below is its own function; the closure only shares the store and the model factory.
 */
export function createLabelingActivities(deps: LabelingDeps) {
  const { store, cached } = deps;
  const configs = new Map<string, RunConfig>();
  const manifests = new Map<string, DatasetManifest>();

  async function cfg(ref: Ref): Promise<RunConfig> {
    let c = configs.get(ref.sha256);
    if (!c) {
      c = await getJson<RunConfig>(store, ref);
      configs.set(ref.sha256, c);
    }
    return c;
  }

  async function manifestOf(ref: Ref): Promise<DatasetManifest> {
    let m = manifests.get(ref.sha256);
    if (!m) {
      m = await loadManifest(store, ref);
      manifests.set(ref.sha256, m);
    }
    return m;
  }

  /** Writes the result of a record-variant (first writer wins) and returns the winner. */
  function commit(blob: LabelResultBlob): Promise<{ ref: Ref; value: LabelResultBlob }> {
    return cached.writeNameOnce(labelNames.result(blob.promptVersion, blob.uuid, blob.variant), blob);
  }

  return {
    /** Resolves `datasets/<name>` and says how many records it has. */
    async labelPrepare(input: { dataset: string }): Promise<{ datasetRef: Ref; count: number }> {
      const ref = await datasetRef(store, input.dataset);
      if (!ref) {
        throw ApplicationFailure.nonRetryable(
          `No dataset named ${input.dataset} in the store; import it first with \`cm2 data import\``,
          "InvalidInput",
        );
      }
      const manifest = await manifestOf(ref);
      return { datasetRef: ref, count: manifest.count };
    },

    /**
     * One labeler call for one (record, variant), unless its result or this attempt is already
     * stored. Validates and repairs the answer; stores the attempt; when the answer is valid or this
     * is the last attempt, stores the result (labeled or rejected with reasons) under its pointer.
     * Model failures that may pass (429, 5xx, timeouts) are retried by Temporal, honouring
     * Retry-After; a refused request (4xx) fails for good and stores nothing.
     */
    async labelAttempt(input: LabelAttemptInput): Promise<LabelAttemptOutput> {
      if (input.promptVersion !== LABEL_PROMPT_VERSION) {
        throw ApplicationFailure.nonRetryable(
          `This worker labels with prompt ${LABEL_PROMPT_VERSION}, the run asks for ${input.promptVersion}`,
          "InvalidInput",
        );
      }
      const manifest = await manifestOf(input.datasetRef);
      const uuid = manifest.uuids[input.index];
      if (uuid === undefined) {
        throw ApplicationFailure.nonRetryable(`Dataset has no record ${input.index}`, "InvalidInput");
      }
      const { promptVersion, variant, attempt } = input;
      const done = await cached.readName<LabelResultBlob>(labelNames.result(promptVersion, uuid, variant));
      if (done) {
        return {
          uuid,
          final: true,
          outcome: outcomeOf(done.value, done.ref, true),
          errors: [],
          fresh: false,
          usage: ZERO,
          costUsd: 0,
        };
      }
      if (input.lookupOnly) {
        return { uuid, final: false, pending: true, errors: [], fresh: false, usage: ZERO, costUsd: 0 };
      }

      const config = await cfg(input.configRef);
      const record = await loadRecord(store, manifest, input.index);
      const attemptName = labelNames.attempt(promptVersion, uuid, variant, attempt);
      let stored = await cached.readName<LabelAttemptBlob>(attemptName);
      let fresh = false;
      if (!stored) {
        const won = await cached.writeNameOnce(attemptName, await callLabeler(config, record, input, uuid));
        stored = won;
        fresh = won.mine;
      }
      const a = stored.value;
      const errors = a.errors.slice(0, 5).map(formatLabelIssue);
      const spent = { usage: fresh ? a.usage : ZERO, costUsd: fresh ? a.costUsd ?? 0 : 0 };
      if (!a.ok && attempt < input.maxAttempts) return { uuid, final: false, errors, fresh, ...spent };

      // Final: gather every attempt of this record-variant into its result.
      const attempts: { ref: Ref; value: LabelAttemptBlob }[] = [];
      for (let k = 1; k < attempt; k++) {
        const prev = await cached.readName<LabelAttemptBlob>(
          labelNames.attempt(promptVersion, uuid, variant, k),
        );
        if (prev) attempts.push(prev);
      }
      attempts.push(stored);
      const usage = attempts.reduce(
        (u, x) => ({
          promptTokens: u.promptTokens + x.value.usage.promptTokens,
          completionTokens: u.completionTokens + x.value.usage.completionTokens,
        }),
        ZERO,
      );
      const costs = attempts.map((x) => x.value.costUsd);
      const result: LabelResultBlob = {
        schema: "cm2.label/v1",
        uuid,
        variant,
        promptVersion,
        model: a.model,
        status: a.ok ? "labeled" : "rejected",
        attempts: attempts.length,
        attemptRefs: attempts.map((x) => x.ref),
        ...(a.ok && a.checklist ? { checklist: a.checklist } : {}),
        repairs: a.ok ? a.repairs : {},
        reasons: a.ok ? [] : a.errors.map(formatLabelIssue),
        attemptErrors: attempts.filter((x) => !x.value.ok).map((x) =>
          x.value.errors.slice(0, 10).map(formatLabelIssue)
        ),
        usage,
        costUsd: costs.every((c) => c === null) ? null : costs.reduce<number>((s, c) => s + (c ?? 0), 0),
      };
      const winner = await commit(result);
      return {
        uuid,
        final: true,
        outcome: outcomeOf(winner.value, winner.ref, false),
        errors,
        fresh,
        ...spent,
      };
    },

    /**
     * Builds the output dataset from the stored results (records with at least one labeled variant,
     * in input order, checklists attached) and the report; returns the summary. Everything is read
     * from the store, so the summary always matches it.
     */
    async labelFinish(input: LabelFinishInput): Promise<{ summary: LabelSummary }> {
      const config = await cfg(input.configRef);
      const prices = labelerPrices(config);
      const manifest = await manifestOf(input.datasetRef);
      const failed = new Map(input.failures.map((f) => [`${f.index}/${f.variant}`, f.reason]));
      const out: TrajectoryRecord[] = [];
      const report: Omit<LabelReport, "datasetRef"> = {
        schema: "cm2.label-report/v1",
        out: input.out,
        dataset: input.dataset,
        parent: input.datasetRef,
        createdAt: new Date().toISOString(),
        promptVersion: input.promptVersion,
        records: input.count,
        variants: input.variants,
        labeled: 0,
        repaired: 0,
        repairs: {},
        rejected: 0,
        failed: 0,
        skipped: 0,
        labeledRecords: 0,
        attempts: 0,
        tokens: { ...ZERO },
        costUsd: null,
        thisRun: { ...input.thisRun, costUsd: prices ? input.thisRun.costUsd : null },
        rejections: [],
        failures: [],
        results: [],
      };
      for (let index = 0; index < input.count; index++) {
        const uuid = manifest.uuids[index]!;
        const labeled: ChecklistVariant[] = [];
        let models: string | undefined;
        let cost = 0;
        for (let variant = 0; variant < input.variants; variant++) {
          const r = await cached.readName<LabelResultBlob>(
            labelNames.result(input.promptVersion, uuid, variant),
          );
          if (!r) {
            const reason = failed.get(`${index}/${variant}`);
            if (reason !== undefined) {
              report.failed++;
              report.failures.push({ uuid, index, variant, reason });
            } else report.skipped++;
            continue;
          }
          const res = r.value;
          report.results.push({ uuid, variant, status: res.status, ref: r.ref });
          report.attempts += res.attempts;
          report.tokens.promptTokens += res.usage.promptTokens;
          report.tokens.completionTokens += res.usage.completionTokens;
          cost += res.costUsd ?? 0;
          if (res.status === "labeled" && res.checklist) {
            report.labeled++;
            if (Object.keys(res.repairs).length > 0) report.repaired++;
            report.repairs = addRepairs(report.repairs, res.repairs);
            labeled.push(res.checklist);
            models ??= res.model;
          } else {
            report.rejected++;
            report.rejections.push({ uuid, index, variant, attempts: res.attempts, reasons: res.reasons });
          }
        }
        if (labeled.length > 0) {
          const record = await loadRecord(store, manifest, index);
          out.push({
            ...record,
            checklists: labeled,
            meta: {
              ...record.meta,
              labeling: { promptVersion: input.promptVersion, model: models, costUsd: prices ? cost : null },
            },
          });
        }
      }
      // Failures the workflow could not list (beyond its cap) are not told apart from skips here.
      report.failed += Math.min(input.failedUnlisted, report.skipped);
      report.skipped -= Math.min(input.failedUnlisted, report.skipped);
      report.labeledRecords = out.length;
      report.costUsd = prices ? costOf(report.tokens, prices) : null;
      let saved;
      try {
        saved = await saveDataset(store, input.out, out, {
          sources: [{
            file: input.dataset,
            format: "dataset",
            imported: out.length,
            errors: input.count - out.length,
          }],
          derivedFrom: { step: `label:${input.promptVersion}`, parent: input.datasetRef },
          allowEmpty: true,
          ...(manifest.validation ? { validation: manifest.validation } : {}),
        });
      } catch (err) {
        if (err instanceof DatasetError) throw ApplicationFailure.nonRetryable(err.message, "InvalidInput");
        throw err;
      }
      const full: LabelReport = { ...report, datasetRef: saved.ref };
      const reportRef = await putJson(store, full);
      await store.setName(labelNames.report(input.out), reportRef);
      const { rejections: _r, failures: _f, results: _s, schema: _c, parent: _p, createdAt: _t, ...summary } =
        full;
      return { summary: { ...summary, reportRef } };
    },
  };

  async function callLabeler(
    config: RunConfig,
    record: TrajectoryRecord,
    input: LabelAttemptInput,
    uuid: string,
  ): Promise<LabelAttemptBlob> {
    const { promptVersion, variant, attempt } = input;
    let prior: PriorAttempt | undefined;
    if (attempt > 1) {
      const prev = await cached.readName<LabelAttemptBlob>(
        labelNames.attempt(promptVersion, uuid, variant, attempt - 1),
      );
      if (!prev) {
        throw ApplicationFailure.nonRetryable(
          `Attempt ${attempt} of ${uuid} v${variant} has no stored attempt ${attempt - 1}`,
          "InvalidInput",
        );
      }
      prior = { output: prev.value.output, errors: prev.value.errors };
    }
    const role = config.models.labeler;
    const request: ChatRequest = {
      messages: labelingMessages(record, prior),
      idempotencyKey: labelCallKey(promptVersion, uuid, variant, attempt),
    };
    if (role.jsonMode === "schema") {
      request.jsonSchema = { name: "checklist_turn_blocks", schema: LABEL_JSON_SCHEMA };
    }
    const model = deps.models("labeler", config);
    const base = {
      schema: "cm2.label-attempt/v1" as const,
      uuid,
      variant,
      attempt,
      promptVersion,
      model: model.model,
    };
    let result: ChatResult;
    try {
      result = await model.complete(request);
    } catch (err) {
      if (err instanceof LlmError && err.type === "Refusal") {
        // A refusal is an answer: the next attempt may do better, and the last one rejects.
        return {
          ...base,
          output: "",
          finishReason: "failed",
          ok: false,
          errors: [{ path: "(root)", message: `The model refused: ${err.message}` }],
          repairs: {},
          usage: ZERO,
          costUsd: labelerPrices(config) ? 0 : null,
        };
      }
      toFailure(err);
    }
    const usage = {
      promptTokens: result.usage.promptTokens,
      completionTokens: result.usage.completionTokens,
    };
    const prices = labelerPrices(config);
    const check = checkLabelText(result.content, record, {
      weightRepairTolerance: input.weightRepairTolerance,
      truncated: result.finishReason === "length",
    });
    return {
      ...base,
      model: result.model || model.model,
      output: result.content,
      finishReason: result.finishReason,
      ok: check.ok,
      errors: check.ok ? [] : check.errors,
      repairs: check.repairs,
      usage,
      costUsd: prices ? costOf(usage, prices) : null,
      ...(check.ok ? { checklist: check.variant } : {}),
    };
  }
}
