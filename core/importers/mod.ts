/**
 * Dataset import: format detection, the per-format importers and {@linkcode importFiles}, which reads
 * files only through a `readText(path)` callback so that this module stays free of I/O.
 *
 * @example
 * ```ts
 * const report = await importFiles(paths, (p) => Deno.readTextFile(p));
 * for (const f of report.files) console.log(f.file, f.format, f.imported, f.errored);
 * for (const e of report.errors) console.error(formatImportError(e));
 * ```
 *
 * @module
 */
import { dirname, join } from "node:path";
import type { TrajectoryRecord, ValidationOptions } from "../records.ts";
import {
  type ImportError,
  type ImportResult,
  type ImportSource,
  isObject,
  jsonlLines,
  parseJson,
} from "./_common.ts";
import { importCm2Json, importCm2Jsonl, importOpenAIChatJsonl } from "./cm2.ts";
import { importTauBench, parseTauBenchCatalog, type TauBenchCatalog } from "./tau_bench.ts";
import {
  importToolTalk,
  parseToolTalkCatalog,
  type ToolTalkCatalog,
  type ToolTalkOptions,
} from "./tooltalk.ts";

export type { Importer, ImportError, ImportResult, ImportSource, RecordRef } from "./_common.ts";
export { normaliseChecklists, normaliseMessage, normaliseTool, stableId } from "./_common.ts";
export { cm2RecordFromRaw, importCm2Json, importCm2Jsonl, importOpenAIChatJsonl } from "./cm2.ts";
export { importTauBench, parseTauBenchCatalog } from "./tau_bench.ts";
export type { TauBenchCatalog, TauBenchOptions } from "./tau_bench.ts";
export { importToolTalk, parseToolTalkCatalog, repairToolTalkSchema } from "./tooltalk.ts";
export type { ToolTalkCatalog, ToolTalkOptions } from "./tooltalk.ts";
export { deriveRuleChecklist, ruleWeights } from "./rule_checklist.ts";

/** The input formats the importers understand. */
export const IMPORT_FORMATS = ["cm2-json", "cm2-jsonl", "openai-jsonl", "tooltalk", "tau-bench"] as const;

/** One input format. */
export type ImportFormat = typeof IMPORT_FORMATS[number];

/** Where the tool catalogs live relative to a data file, searched upward from its folder. */
export const TOOLTALK_CATALOG = "derived/tooltalk_openai_tools.derived.json";
/** See {@linkcode TOOLTALK_CATALOG}. */
export const TAU_BENCH_CATALOG = "derived/tau_bench_v1_openai_tools.derived.json";

function formatOfValue(value: unknown): ImportFormat | undefined {
  if (Array.isArray(value)) {
    const first: unknown = value[0];
    if (isObject(first) && Array.isArray(first.traj) && "task_id" in first) return "tau-bench";
    return "cm2-json";
  }
  if (isObject(value)) {
    if (Array.isArray(value.conversation)) return "tooltalk";
    if ("uuid" in value || "messages" in value || "extra_info" in value) return "cm2-json";
  }
  return undefined;
}

/**
 * Picks the importer for a file from its name and content: `.jsonl` is CM2 JSONL when its first
 * record has `uuid` or `extra_info`, else OpenAI chat JSONL; a JSON object with `conversation[]` is
 * ToolTalk, an array of `{task_id, traj}` is τ-bench, other arrays and record objects are CM2 JSON.
 * A `.json` file that does not parse is sniffed by its text. `undefined` when nothing fits.
 */
export function detectFormat(path: string, text: string): ImportFormat | undefined {
  const lower = path.toLowerCase();
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) {
    for (const { text: line } of jsonlLines(text)) {
      const p = parseJson(line);
      if (!p.ok || !isObject(p.value)) continue;
      return "uuid" in p.value || "extra_info" in p.value ? "cm2-jsonl" : "openai-jsonl";
    }
    return "cm2-jsonl";
  }
  const parsed = parseJson(text);
  if (parsed.ok) return formatOfValue(parsed.value);
  if (!lower.endsWith(".json")) return undefined;
  if (/"conversation"\s*:/.test(text)) return "tooltalk";
  if (/"traj"\s*:/.test(text)) return "tau-bench";
  return "cm2-json";
}

/**
 * Benchmark files that are not training data, recognised so that an import says what they are instead of
 * failing record by record: τ²-bench task definitions, BFCL test entries and BFCL function docs (each line a
 * JSON object, even in `.json` files). None holds a reference trajectory to derive checklists from.
 */
export function recognizeNonTrainingFile(text: string): string | undefined {
  const parsed = parseJson(text);
  const first = parsed.ok ? (Array.isArray(parsed.value) ? parsed.value[0] : undefined) : (() => {
    const line = jsonlLines(text)[0];
    const p = line ? parseJson(line.text) : undefined;
    return p?.ok ? p.value : undefined;
  })();
  if (!isObject(first)) return undefined;
  const why = "it holds no reference trajectory to train on; use it with `cm2 eval`, not `data import`";
  if ("user_scenario" in first && "evaluation_criteria" in first) {
    return `This is a τ²-bench task file (user scenarios and evaluation criteria): ${why}`;
  }
  if (typeof first.id === "string" && ("question" in first || "ground_truth" in first)) {
    return `This is a BFCL test file (questions and ground-truth calls, ids like ${first.id}): ${why}`;
  }
  if (typeof first.name === "string" && isObject(first.parameters) && !("messages" in first)) {
    return "This is a BFCL function-doc file (tool schemas, not conversations): it cannot be imported as records";
  }
  return undefined;
}

/** Tool catalogs and per-format options for {@linkcode importText}. */
export interface ImportTextOptions {
  tooltalkCatalog?: ToolTalkCatalog;
  tauBenchCatalog?: TauBenchCatalog;
  tooltalk?: Omit<ToolTalkOptions, "catalog">;
  tauBenchDomain?: string;
}

/**
 * Runs the importer of `format` on one file's text.
 *
 * @throws {Error} when the format needs a tool catalog that `options` does not give
 */
export function importText(
  format: ImportFormat,
  text: string,
  source: ImportSource,
  options: ImportTextOptions = {},
): ImportResult {
  switch (format) {
    case "cm2-json":
      return importCm2Json(text, source);
    case "cm2-jsonl":
      return importCm2Jsonl(text, source);
    case "openai-jsonl":
      return importOpenAIChatJsonl(text, source);
    case "tooltalk": {
      if (!options.tooltalkCatalog) {
        throw new Error(`ToolTalk import of ${source.file} needs the ToolTalk tool catalog`);
      }
      return importToolTalk(text, source, { ...options.tooltalk, catalog: options.tooltalkCatalog });
    }
    case "tau-bench": {
      if (!options.tauBenchCatalog) {
        throw new Error(`Tau-bench import of ${source.file} needs the tau-bench tool catalog`);
      }
      const o = options.tauBenchDomain === undefined
        ? { catalog: options.tauBenchCatalog }
        : { catalog: options.tauBenchCatalog, domain: options.tauBenchDomain };
      return importTauBench(text, source, o);
    }
  }
}

/** Options of {@linkcode importFiles}. */
export interface ImportFilesOptions {
  /** Force one format instead of detecting it per file. */
  format?: ImportFormat;
  /** Path of the ToolTalk tool catalog; by default `derived/…` searched upward from each file. */
  tooltalkCatalogPath?: string;
  /** Path of the τ-bench tool catalog; by default `derived/…` searched upward from each file. */
  tauBenchCatalogPath?: string;
  tooltalk?: Omit<ToolTalkOptions, "catalog">;
  tauBenchDomain?: string;
  /** Validation options for every record. */
  validation?: ValidationOptions;
}

/** Per-file counts: every input record of the file is either imported or errored. */
export interface FileImportSummary {
  file: string;
  format: ImportFormat | undefined;
  imported: number;
  errored: number;
  /** True when the file as a whole could not be read, detected or parsed (its records are uncounted). */
  failed: boolean;
}

/** The result of {@linkcode importFiles}. */
export interface ImportReport {
  records: TrajectoryRecord[];
  errors: ImportError[];
  files: FileImportSummary[];
}

/** Reads a file's text; may be synchronous or asynchronous. */
export type ReadText = (path: string) => string | Promise<string>;

async function findUpward(
  file: string,
  relative: string,
  readText: ReadText,
  cache: Map<string, string | null>,
): Promise<{ path: string; text: string } | undefined> {
  let dir = dirname(file);
  for (let up = 0; up < 4; up++) {
    const candidate = join(dir, relative);
    if (!cache.has(candidate)) {
      try {
        cache.set(candidate, await readText(candidate));
      } catch {
        cache.set(candidate, null);
      }
    }
    const text = cache.get(candidate);
    if (typeof text === "string") return { path: candidate, text };
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return undefined;
}

/**
 * Imports many files: detects each format, loads the tool catalogs ToolTalk and τ-bench need (once
 * per catalog path), runs the importer and aggregates records, errors and per-file counts. A uuid
 * already imported from an earlier file is an error on the later record.
 */
export async function importFiles(
  paths: readonly string[],
  readText: ReadText,
  options: ImportFilesOptions = {},
): Promise<ImportReport> {
  const report: ImportReport = { records: [], errors: [], files: [] };
  const texts = new Map<string, string | null>();
  const tooltalkCatalogs = new Map<string, ToolTalkCatalog>();
  const tauCatalogs = new Map<string, TauBenchCatalog>();
  const seen = new Map<string, string>();
  for (const file of paths) {
    const summary: FileImportSummary = { file, format: undefined, imported: 0, errored: 0, failed: false };
    report.files.push(summary);
    const fileError = (message: string, value?: unknown) => {
      summary.failed = true;
      const e: ImportError = { file, record: {}, path: "$", message };
      if (value !== undefined) e.value = value;
      report.errors.push(e);
    };
    let text: string;
    try {
      text = await readText(file);
    } catch (e) {
      fileError(`File cannot be read: ${e instanceof Error ? e.message : String(e)}`, file);
      continue;
    }
    const known = options.format === undefined && file.toLowerCase().endsWith(".json")
      ? recognizeNonTrainingFile(text)
      : undefined;
    if (known) {
      fileError(known, file);
      continue;
    }
    const format = options.format ?? detectFormat(file, text);
    summary.format = format;
    if (format === undefined) {
      fileError(
        `File format is not recognised; the formats are ${IMPORT_FORMATS.join(", ")} (--format)`,
        file,
      );
      continue;
    }
    const textOptions: ImportTextOptions = {};
    if (options.tooltalk) textOptions.tooltalk = options.tooltalk;
    if (options.tauBenchDomain !== undefined) textOptions.tauBenchDomain = options.tauBenchDomain;
    try {
      if (format === "tooltalk" || format === "tau-bench") {
        const isTT = format === "tooltalk";
        const explicit = isTT ? options.tooltalkCatalogPath : options.tauBenchCatalogPath;
        let found: { path: string; text: string } | undefined;
        if (explicit !== undefined) found = { path: explicit, text: await readText(explicit) };
        else found = await findUpward(file, isTT ? TOOLTALK_CATALOG : TAU_BENCH_CATALOG, readText, texts);
        if (!found) {
          fileError(`No ${isTT ? TOOLTALK_CATALOG : TAU_BENCH_CATALOG} found above the file`, file);
          continue;
        }
        if (isTT) {
          const c = tooltalkCatalogs.get(found.path) ?? parseToolTalkCatalog(found.text);
          tooltalkCatalogs.set(found.path, c);
          textOptions.tooltalkCatalog = c;
        } else {
          const c = tauCatalogs.get(found.path) ?? parseTauBenchCatalog(found.text);
          tauCatalogs.set(found.path, c);
          textOptions.tauBenchCatalog = c;
        }
      }
    } catch (e) {
      fileError(`Tool catalog cannot be loaded: ${e instanceof Error ? e.message : String(e)}`, file);
      continue;
    }
    const result = importText(format, text, {
      file,
      ...(options.validation ? { validation: options.validation } : {}),
    }, textOptions);
    for (const e of result.errors) {
      if (e.record.index === undefined) summary.failed = true;
      else summary.errored++;
      report.errors.push(e);
    }
    for (const r of result.records) {
      const first = seen.get(r.uuid);
      if (first !== undefined) {
        summary.errored++;
        report.errors.push({
          file,
          record: { id: r.uuid },
          path: "uuid",
          message: `Record uuid is not unique, first imported from ${first}`,
          value: r.uuid,
        });
        continue;
      }
      seen.set(r.uuid, file);
      summary.imported++;
      report.records.push(r);
    }
    if (summary.imported === 0 && summary.errored === 0 && !summary.failed) {
      fileError("File holds no record (it is empty, or only whitespace)");
    }
  }
  return report;
}

/**
 * One import error as a user reads it: the file, the 1-based line (or the 1-based record number where the format
 * has no lines; "whole file" for a file-level error), the record's uuid when it has one, the field, the problem
 * and the value; then, on indented lines, the record's further problems (the first few, and how many more).
 */
export function formatImportError(e: ImportError): string {
  const where = e.record.index === undefined && e.record.line === undefined ? "whole file" : [
    e.record.line !== undefined ? `line ${e.record.line}` : `record #${(e.record.index ?? 0) + 1}`,
    e.record.id !== undefined ? `(uuid ${e.record.id})` : "",
  ].filter((s) => s !== "").join(" ");
  const value = (v: unknown) => (v === undefined ? "" : ` (found ${JSON.stringify(v)})`);
  const lines = [`${e.file}: ${where}: ${e.path}: ${e.message}${value(e.value)}`];
  for (const m of e.more ?? []) lines.push(`    also ${m.path}: ${m.message}${value(m.value)}`);
  const rest = (e.moreIssues ?? 0) - (e.more?.length ?? 0);
  if (rest > 0) lines.push(`    and ${rest} more problem(s) in this record`);
  return lines.join("\n");
}
