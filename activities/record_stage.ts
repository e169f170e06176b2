/**
 * Activities of the durable per-record LLM stages (`workflows/record_stage.ts`): the LLM quality filter
 * and CoT compression, each a {@linkcode RecordStage} of `core/`. One model call per activity
 * ({@linkcode createRecordStageActivities}' `stageAttempt`), its answer stored under a first-writer-wins
 * pointer before the activity returns, and every finished record's result under another; both are read
 * before any call, so a retried activity, a resumed run or a whole re-run never pays twice.
 *
 * Store layout (names): `stages/<kind>/<prompt version>/<uuid segment>/attempt-<a>` per call,
 * `stages/<kind>/<prompt version>/<uuid segment>/result` per finished record, and
 * `stages/<kind>/<out>/report` for the report of the output dataset `datasets/<out>`. The model is the
 * run config's `labeler` role, priced by its `prices`.
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import type { RunConfig } from "../core/config.ts";
import { cotCompressStage } from "../core/cot_compress.ts";
import { type ChatRequest, type ChatResult, LlmError } from "../core/llm_types.ts";
import { qualityFilterStage } from "../core/quality_filter.ts";
import {
  formatStageIssue,
  type RecordStage,
  STAGE_KINDS,
  type StageDecision,
  type StageIssue,
  type StageKind,
  type StageParams,
  type StageReason,
} from "../core/record_stage.ts";
import type { TrajectoryRecord } from "../core/records.ts";
import { jsonSchemaOf } from "../llm/structured.ts";
import { costOf } from "../llm/usage.ts";
import type { CachedStore } from "../store/cached.ts";
import {
  DatasetError,
  type DatasetManifest,
  datasetRef,
  loadRecord,
  saveDataset,
} from "../store/datasets.ts";
import { type ArtifactStore, getJson, putJson, type Ref } from "../store/mod.ts";
import { labelerPrices, type ModelFactory, toFailure } from "./common.ts";
import { type LabelUsage, uuidSegment } from "./labeling.ts";

/** What the record-stage activities need. */
export interface RecordStageDeps {
  store: ArtifactStore;
  cached: CachedStore;
  models: ModelFactory;
}

/** The stages by kind. */
export const RECORD_STAGES: Readonly<Record<StageKind, RecordStage<unknown>>> = {
  filter: qualityFilterStage as RecordStage<unknown>,
  compress: cotCompressStage as RecordStage<unknown>,
};

/** The stage of a kind; a non-retryable failure for an unknown one. */
export function stageOf(kind: string): RecordStage<unknown> {
  if (!(STAGE_KINDS as readonly string[]).includes(kind)) {
    throw ApplicationFailure.nonRetryable(
      `Unknown stage kind ${JSON.stringify(kind)}; known: ${STAGE_KINDS.join(", ")}`,
      "InvalidInput",
    );
  }
  return RECORD_STAGES[kind as StageKind];
}

/** Store names of a stage's attempts, results and reports. */
export const stageNames = {
  record: (kind: StageKind, promptVersion: string, uuid: string) =>
    `stages/${kind}/${promptVersion}/${uuidSegment(uuid)}`,
  attempt: (kind: StageKind, promptVersion: string, uuid: string, attempt: number) =>
    `${stageNames.record(kind, promptVersion, uuid)}/attempt-${attempt}`,
  result: (kind: StageKind, promptVersion: string, uuid: string) =>
    `${stageNames.record(kind, promptVersion, uuid)}/result`,
  report: (kind: StageKind, out: string) => `stages/${kind}/${out}/report`,
};

/** The idempotency key of one stage call (the same in every run): `stage/<kind>/<version>/<uuid>/attempt-<a>`. */
export function stageCallKey(kind: StageKind, promptVersion: string, uuid: string, attempt: number): string {
  return `stage/${kind}/${promptVersion}/${uuid}/attempt-${attempt}`;
}

/** One stored stage call. */
export interface StageAttemptBlob {
  schema: "cm2.stage-attempt/v1";
  kind: StageKind;
  uuid: string;
  attempt: number;
  promptVersion: string;
  model: string;
  /** The answer verbatim (empty when the model refused). */
  output: string;
  finishReason: ChatResult["finishReason"] | "refused";
  ok: boolean;
  errors: StageIssue[];
  /** The checked value of an answer that passed (what `accept` takes). */
  value?: unknown;
  usage: LabelUsage;
  /** At the labeler prices configured when the call was made; null without prices. */
  costUsd: number | null;
}

/** One finished record of a stage. */
export interface StageResultBlob {
  schema: "cm2.stage-result/v1";
  kind: StageKind;
  uuid: string;
  promptVersion: string;
  /** The model behind the last attempt; null when no call was needed. */
  model: string | null;
  status: string;
  output: StageDecision["output"];
  /** The rewritten record, when `output` is `rewrite`. */
  recordRef?: Ref;
  reasons: StageReason[];
  details?: unknown;
  /** Calls made (0 when the record needed none). */
  attempts: number;
  attemptRefs: Ref[];
  /** Problems of each failed attempt, in order (formatted, at most 10 each). */
  attemptErrors: string[][];
  usage: LabelUsage;
  costUsd: number | null;
}

/** What the workflow learns about a finished record. */
export interface StageOutcome {
  status: string;
  output: StageDecision["output"];
  attempts: number;
  /** The first reasons, formatted (at most 5). */
  reasons: string[];
  resultRef: Ref;
  /** The result was in the store already: no call for it in this activity. */
  cached: boolean;
}

/** Input of `stageAttempt`. */
export interface StageAttemptInput {
  kind: StageKind;
  configRef: Ref;
  datasetRef: Ref;
  index: number;
  attempt: number;
  maxAttempts: number;
  promptVersion: string;
  params: StageParams;
  /** Never call (the run is over budget): only a stored result, or a record that needs no call, settles. */
  lookupOnly?: boolean;
}

/** Output of `stageAttempt`. */
export interface StageAttemptOutput {
  uuid: string;
  /** Finished (`outcome` set), or another attempt is due (`errors` say why). */
  final: boolean;
  outcome?: StageOutcome;
  /** `lookupOnly` found nothing. */
  pending?: boolean;
  /** The first problems of this attempt, formatted. */
  errors: string[];
  /** This activity paid for a call. */
  fresh: boolean;
  usage: LabelUsage;
  costUsd: number;
}

/** What this run itself paid. */
export interface StageSpend {
  calls: number;
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
}

/** Input of `stageFinish`. */
export interface StageFinishInput {
  kind: StageKind;
  configRef: Ref;
  datasetRef: Ref;
  /** The input dataset's name (provenance). */
  dataset: string;
  out: string;
  promptVersion: string;
  params: StageParams;
  /** Records considered: the first `count` of the dataset. */
  count: number;
  /** Records whose calls failed for good in this run (no result stored). */
  failures: { index: number; reason: string }[];
  failedUnlisted: number;
  thisRun: StageSpend;
}

/** The summary of a stage run, computed from the store. */
export interface StageSummary {
  kind: StageKind;
  out: string;
  dataset: string;
  promptVersion: string;
  params: StageParams;
  records: number;
  /** Finished records per status (every status of the stage, zeros included). */
  counts: Record<string, number>;
  /** Records without a result: calls failed for good (a re-run retries them), or never started. */
  failed: number;
  skipped: number;
  /** Records in the output dataset. */
  outputRecords: number;
  /** Calls behind the stored results (all runs) and their tokens and cost (null without prices). */
  attempts: number;
  tokens: LabelUsage;
  costUsd: number | null;
  thisRun: Omit<StageSpend, "costUsd"> & { costUsd: number | null };
  /** The stage's measure (compress: reasoning tokens) over the input and the output records. */
  measure?: { before: number; after: number };
  datasetRef: Ref;
  reportRef: Ref;
}

/** The report blob (`stages/<kind>/<out>/report`): the summary plus every record with reasons, every failure. */
export interface StageReport extends Omit<StageSummary, "reportRef"> {
  schema: "cm2.stage-report/v1";
  parent: Ref;
  createdAt: string;
  /** Records with reasons (filter: rejected and unjudged; compress: not compressed). */
  rejections: { uuid: string; index: number; status: string; attempts: number; reasons: StageReason[] }[];
  failures: { uuid: string; index: number; reason: string }[];
  results: { uuid: string; status: string; ref: Ref }[];
}

const NOTHING: LabelUsage = { promptTokens: 0, completionTokens: 0 };

/** A reason as one line: `path: message`. */
export function formatStageReason(r: StageReason): string {
  return `${r.path}: ${r.message}`;
}

/**
 * Builds `stagePrepare`, `stageAttempt` and `stageFinish` over their dependencies. Long as a whole because
 * it is a factory; each activity and helper inside is its own function sharing the store and the models.
 */
export function createRecordStageActivities(deps: RecordStageDeps) {
  const { store, cached } = deps;

  const manifestOf = (ref: Ref) => cached.memo<DatasetManifest>(ref);

  function outcomeOf(result: { ref: Ref; value: StageResultBlob }, wasStored: boolean): StageOutcome {
    const r = result.value;
    return {
      status: r.status,
      output: r.output,
      attempts: r.attempts,
      reasons: r.reasons.slice(0, 5).map(formatStageReason),
      resultRef: result.ref,
      cached: wasStored,
    };
  }

  /** Stores the result of a finished record (first writer wins) from its decision and attempts. */
  async function settleRecord(
    input: StageAttemptInput,
    uuid: string,
    decision: StageDecision,
    attempts: { ref: Ref; value: StageAttemptBlob }[],
  ): Promise<{ ref: Ref; value: StageResultBlob }> {
    const blobs = attempts.map((a) => a.value);
    const priced = blobs.filter((b) => b.costUsd !== null);
    const result: StageResultBlob = {
      schema: "cm2.stage-result/v1",
      kind: input.kind,
      uuid,
      promptVersion: input.promptVersion,
      model: blobs.at(-1)?.model ?? null,
      status: decision.status,
      output: decision.output,
      ...(decision.output === "rewrite" && decision.record
        ? { recordRef: await cached.writeJson(decision.record) }
        : {}),
      reasons: decision.reasons,
      ...(decision.details !== undefined ? { details: decision.details } : {}),
      attempts: blobs.length,
      attemptRefs: attempts.map((a) => a.ref),
      attemptErrors: blobs.filter((b) => !b.ok).map((b) => b.errors.slice(0, 10).map(formatStageIssue)),
      usage: {
        promptTokens: blobs.reduce((n, b) => n + b.usage.promptTokens, 0),
        completionTokens: blobs.reduce((n, b) => n + b.usage.completionTokens, 0),
      },
      costUsd: blobs.length > 0 && priced.length === 0 ? null : priced.reduce((n, b) => n + b.costUsd!, 0),
    };
    const won = await cached.writeNameOnce(stageNames.result(input.kind, input.promptVersion, uuid), result);
    return { ref: won.ref, value: won.value };
  }

  /** One model call for one attempt of one record, checked; a refusal counts as a failed answer. */
  async function ask(
    stage: RecordStage<unknown>,
    config: RunConfig,
    record: TrajectoryRecord,
    input: StageAttemptInput,
  ): Promise<StageAttemptBlob> {
    const { kind, promptVersion, attempt } = input;
    let prior: { output: string; errors: StageIssue[] } | undefined;
    if (attempt > 1) {
      const name = stageNames.attempt(kind, promptVersion, record.uuid, attempt - 1);
      const previous = await cached.readName<StageAttemptBlob>(name);
      if (!previous) {
        throw ApplicationFailure.nonRetryable(`${name} is missing: attempts run in order`, "InvalidInput");
      }
      prior = { output: previous.value.output, errors: previous.value.errors };
    }
    const role = config.models.labeler;
    const request: ChatRequest = {
      messages: stage.messages(record, input.params, prior),
      idempotencyKey: stageCallKey(kind, promptVersion, record.uuid, attempt),
    };
    if (role.jsonMode === "schema") {
      request.jsonSchema = { name: stage.schemaName, schema: jsonSchemaOf(stage.responseSchema) };
    } else if (role.jsonMode === "object") request.jsonObject = true;
    const model = deps.models("labeler", config);
    const prices = labelerPrices(config);
    const blob: StageAttemptBlob = {
      schema: "cm2.stage-attempt/v1",
      kind,
      uuid: record.uuid,
      attempt,
      promptVersion,
      model: model.model,
      output: "",
      finishReason: "refused",
      ok: false,
      errors: [],
      usage: NOTHING,
      costUsd: prices ? 0 : null,
    };
    let reply: ChatResult;
    try {
      reply = await model.complete(request);
    } catch (err) {
      if (!(err instanceof LlmError && err.type === "Refusal")) toFailure(err);
      // The next attempt may answer; the last one settles the record.
      return { ...blob, errors: [{ path: "(root)", message: `The model refused: ${err.message}` }] };
    }
    const usage = { promptTokens: reply.usage.promptTokens, completionTokens: reply.usage.completionTokens };
    const check = stage.check(reply.content, record, input.params, {
      truncated: reply.finishReason === "length",
    });
    return {
      ...blob,
      model: reply.model || model.model,
      output: reply.content,
      finishReason: reply.finishReason,
      ok: check.ok,
      errors: check.ok ? [] : check.errors,
      ...(check.ok ? { value: check.value } : {}),
      usage,
      costUsd: prices ? costOf(usage, prices) : null,
    };
  }

  return {
    /** Resolves `datasets/<name>` to its manifest and record count; fails for good when it is missing. */
    async stagePrepare(input: { dataset: string; kind: StageKind; params: StageParams }): Promise<
      { datasetRef: Ref; count: number }
    > {
      const problem = stageOf(input.kind).checkParams(input.params);
      if (problem) throw ApplicationFailure.nonRetryable(problem, "InvalidInput");
      const ref = await datasetRef(store, input.dataset);
      if (ref === undefined) {
        throw ApplicationFailure.nonRetryable(
          `The store has no dataset ${JSON.stringify(input.dataset)} (import one with \`cm2 data import\`)`,
          "InvalidInput",
        );
      }
      return { datasetRef: ref, count: (await manifestOf(ref)).count };
    },

    /**
     * One attempt of one record: its stored result if there is one (no call); otherwise the stored answer
     * of this attempt or one new call, checked. A passing answer, the last attempt, or a record that needs
     * no call settles the record's result. Calls that may pass later (429, 5xx, timeouts) fail the activity
     * for Temporal to retry; a refused request (4xx) fails for good and stores nothing.
     */
    async stageAttempt(input: StageAttemptInput): Promise<StageAttemptOutput> {
      const stage = stageOf(input.kind);
      const version = stage.promptVersion(input.params);
      if (version !== input.promptVersion) {
        throw ApplicationFailure.nonRetryable(
          `This worker's ${input.kind} stage is ${version}; the run asks for ${input.promptVersion}`,
          "InvalidInput",
        );
      }
      const manifest = await manifestOf(input.datasetRef);
      const uuid = manifest.uuids[input.index];
      if (uuid === undefined) {
        throw ApplicationFailure.nonRetryable(
          `Dataset ${manifest.name} has ${manifest.count} records, not ${input.index + 1}`,
          "InvalidInput",
        );
      }
      const unpaid = { fresh: false, usage: NOTHING, costUsd: 0 };
      const stored = await cached.readName<StageResultBlob>(stageNames.result(input.kind, version, uuid));
      if (stored) return { uuid, final: true, outcome: outcomeOf(stored, true), errors: [], ...unpaid };
      const record = await loadRecord(store, manifest, input.index);
      const early = stage.settle(record, input.params);
      if (early) {
        // Free: settled even while the run is paused on its budget.
        const settled = await settleRecord(input, uuid, early, []);
        return { uuid, final: true, outcome: outcomeOf(settled, false), errors: [], ...unpaid };
      }
      if (input.lookupOnly) return { uuid, final: false, pending: true, errors: [], ...unpaid };
      const config = await cached.memo<RunConfig>(input.configRef);
      const name = stageNames.attempt(input.kind, version, uuid, input.attempt);
      const found = await cached.readName<StageAttemptBlob>(name);
      const current = found
        ? { ...found, mine: false }
        : await cached.writeNameOnce(name, await ask(stage, config, record, input));
      const a = current.value;
      const paid = current.mine ? { fresh: true, usage: a.usage, costUsd: a.costUsd ?? 0 } : unpaid;
      const errors = a.errors.slice(0, 5).map(formatStageIssue);
      if (!a.ok && input.attempt < input.maxAttempts) return { uuid, final: false, errors, ...paid };

      const history: { ref: Ref; value: StageAttemptBlob }[] = [];
      for (let k = 1; k < input.attempt; k++) {
        const earlier = await cached.readName<StageAttemptBlob>(
          stageNames.attempt(input.kind, version, uuid, k),
        );
        if (earlier) history.push(earlier);
      }
      history.push({ ref: current.ref, value: a });
      const decision = a.ok
        ? stage.accept(a.value, record, input.params)
        : stage.exhausted(record, a.errors, history.length);
      const settled = await settleRecord(input, uuid, decision, history);
      return { uuid, final: true, outcome: outcomeOf(settled, false), errors, ...paid };
    },

    /**
     * Writes the output dataset from the stored results (in input order: kept records as they are,
     * rewritten ones rewritten, dropped ones left out) and the report; returns the summary. Everything
     * is read from the store, so the summary matches it.
     */
    async stageFinish(input: StageFinishInput): Promise<{ summary: StageSummary }> {
      const stage = stageOf(input.kind);
      const config = await cached.memo<RunConfig>(input.configRef);
      const prices = labelerPrices(config);
      const manifest = await manifestOf(input.datasetRef);
      const failedAt = new Map(input.failures.map((f) => [f.index, f.reason]));
      const counts: Record<string, number> = Object.fromEntries(stage.statuses.map((s) => [s, 0]));
      const report: Omit<StageReport, "datasetRef"> = {
        schema: "cm2.stage-report/v1",
        createdAt: new Date().toISOString(),
        kind: input.kind,
        dataset: input.dataset,
        parent: input.datasetRef,
        out: input.out,
        params: input.params,
        promptVersion: input.promptVersion,
        records: input.count,
        counts,
        failed: 0,
        skipped: 0,
        outputRecords: 0,
        attempts: 0,
        tokens: { ...NOTHING },
        costUsd: null,
        thisRun: { ...input.thisRun, costUsd: prices ? input.thisRun.costUsd : null },
        ...(stage.measure ? { measure: { before: 0, after: 0 } } : {}),
        rejections: [],
        failures: [],
        results: [],
      };
      const output: TrajectoryRecord[] = [];
      for (let index = 0; index < input.count; index++) {
        const uuid = manifest.uuids[index]!;
        const found = await cached.readName<StageResultBlob>(
          stageNames.result(input.kind, input.promptVersion, uuid),
        );
        let kept: TrajectoryRecord | undefined;
        let original: TrajectoryRecord | undefined;
        const load = async () => (original ??= await loadRecord(store, manifest, index));
        if (!found) {
          const reason = failedAt.get(index);
          if (reason === undefined) report.skipped++;
          else {
            report.failed++;
            report.failures.push({ uuid, index, reason });
          }
          if (stage.withoutResult === "keep") kept = await load();
        } else {
          const r = found.value;
          counts[r.status] = (counts[r.status] ?? 0) + 1;
          report.results.push({ uuid, status: r.status, ref: found.ref });
          report.attempts += r.attempts;
          report.tokens.promptTokens += r.usage.promptTokens;
          report.tokens.completionTokens += r.usage.completionTokens;
          if (r.reasons.length > 0) {
            report.rejections.push({
              uuid,
              index,
              status: r.status,
              attempts: r.attempts,
              reasons: r.reasons,
            });
          }
          if (r.output === "keep") kept = await load();
          else if (r.output === "rewrite" && r.recordRef) {
            kept = await getJson<TrajectoryRecord>(store, r.recordRef);
          }
        }
        if (kept) output.push(kept);
        if (stage.measure && report.measure) {
          report.measure.before += stage.measure(await load());
          if (kept) report.measure.after += stage.measure(kept);
        }
      }
      // Failures beyond the workflow's list cannot be told from skips here.
      const unlisted = Math.min(input.failedUnlisted, report.skipped);
      report.failed += unlisted;
      report.skipped -= unlisted;
      report.outputRecords = output.length;
      report.costUsd = prices ? costOf(report.tokens, prices) : null;
      const provenance = { step: stage.step, parent: input.datasetRef };
      const source = { file: input.dataset, format: "dataset", imported: output.length, errors: 0 };
      source.errors = input.count - output.length;
      const saved = await saveDataset(store, input.out, output, {
        sources: [source],
        derivedFrom: provenance,
        ...(manifest.validation ? { validation: manifest.validation } : {}),
        allowEmpty: true,
      }).catch((err: unknown) => {
        throw err instanceof DatasetError
          ? ApplicationFailure.nonRetryable(err.message, "InvalidInput")
          : err;
      });
      const full: StageReport = { ...report, datasetRef: saved.ref };
      const reportRef = await putJson(store, full);
      await store.setName(stageNames.report(input.kind, input.out), reportRef);
      const { schema: _s, parent: _p, createdAt: _c, rejections: _r, failures: _f, results: _x, ...summary } =
        full;
      return { summary: { ...summary, reportRef } };
    },
  };
}
