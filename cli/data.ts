/**
 * `cm2 data import | inspect | filter`: datasets in the store, with counts and precise errors.
 *
 * @module
 */
import type { Command } from "commander";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { FILTER_CRITERIA, type FilterCriterion, filterRecords } from "../core/filters.ts";
import {
  formatImportError,
  IMPORT_FORMATS,
  type ImportError,
  importFiles,
  type ImportFormat,
} from "../core/importers/mod.ts";
import { inspectDataset } from "../core/inspect.ts";
import type { TrajectoryRecord } from "../core/records.ts";
import { datasetRef, loadAllRecords, loadManifest, saveDataset } from "../store/datasets.ts";
import type { ArtifactStore } from "../store/mod.ts";
import { fail, readText, storeFrom } from "./common.ts";

/** Loads records from a store dataset name or a dataset file. */
async function loadRecords(
  store: ArtifactStore,
  nameOrFile: string,
): Promise<{ name: string; records: TrajectoryRecord[] }> {
  const ref = await datasetRef(store, nameOrFile).catch(() => undefined);
  if (ref) return { name: nameOrFile, records: await loadAllRecords(store, await loadManifest(store, ref)) };
  try {
    await fs.stat(nameOrFile);
  } catch {
    fail(`No dataset named ${JSON.stringify(nameOrFile)} in ${store.url} and no such file`);
  }
  const report = await importFiles([nameOrFile], readText);
  for (const e of report.errors) printImportError(e);
  return { name: path.basename(nameOrFile), records: report.records };
}

/** Prints one import error (see `formatImportError`), indented. */
function printImportError(e: ImportError): void {
  console.error(formatImportError(e).split("\n").map((l) => `  ${l}`).join("\n"));
}

function printSummary(obj: Record<string, unknown>, indent: string): void {
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      console.log(`${indent}${k}:`);
      printSummary(v as Record<string, unknown>, indent + "  ");
    } else {console.log(
        `${indent}${k}: ${Array.isArray(v) ? v.join(", ") : typeof v === "number" ? round(v) : v}`,
      );}
  }
}

function round(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(3);
}

/** Registers `cm2 data`. */
export function registerDataCommands(program: Command): void {
  const data = program.command("data").description("datasets: import, inspect, filter");
  data.command("import")
    .argument("<paths...>", "files to import (CM2 JSON/JSONL, OpenAI chat JSONL, ToolTalk, τ-bench)")
    .requiredOption("--name <name>", "dataset name in the store")
    .option("--format <format>", `force a format: ${IMPORT_FORMATS.join(", ")}`)
    .option("--store <url>", "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)")
    .option(
      "--allow-empty-tool-responses",
      "accept records whose tool messages are empty (τ-bench's think tool answers nothing); runs check them alike",
    )
    .option(
      "--allow-rejects",
      "exit 0 even when some records were rejected (the valid rest is saved either way)",
    )
    .description(
      "import records into the store as a new version of a dataset (exit 1 when nothing was imported, or when " +
        "records were rejected without --allow-rejects; an existing dataset is never replaced by an empty one)",
    )
    .action(importCommand);

  data.command("inspect")
    .argument("<dataset>", "dataset name in the store, or a file")
    .option("--store <url>", "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)")
    .option("--json", "print JSON")
    .description("summarise records, turns, steps, tools and checklist coverage")
    .action(async (name: string, opts: { store: string; json?: boolean }) => {
      const { name: label, records } = await loadRecords(storeFrom(opts), name);
      const summary = inspectDataset(records);
      if (opts.json) console.log(JSON.stringify(summary, null, 2));
      else {
        console.log(`dataset ${label}`);
        printSummary(summary as unknown as Record<string, unknown>, "  ");
      }
    });

  data.command("filter")
    .argument("<dataset>", "dataset name in the store, or a file")
    .option("--out <name>", "store the kept records as this dataset")
    .option("--disable <criteria>", `comma-separated criteria to skip (of ${FILTER_CRITERIA.join(", ")})`)
    .option(
      "--enable <criteria>",
      "comma-separated criteria to apply even where skipped by default (think_tags)",
    )
    .option("--rejected <file>", "write each rejected record's uuid and reasons as JSON lines")
    .option("--store <url>", "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)")
    .option("--allow-empty", "write --out even when every record was rejected")
    .description(
      "apply CM2's seven rule-based filters; print counts per criterion and each rejected record with its " +
        "reasons (think_tags applies by default only to data that has <think> tags)",
    )
    .action(filterCommand);
}

/** `cm2 data import`: see its description. */
async function importCommand(
  paths: string[],
  opts: {
    name: string;
    format?: string;
    store: string;
    allowRejects?: boolean;
    allowEmptyToolResponses?: boolean;
  },
): Promise<void> {
  if (opts.format && !IMPORT_FORMATS.includes(opts.format as ImportFormat)) {
    fail(`Unknown format ${JSON.stringify(opts.format)}; use one of ${IMPORT_FORMATS.join(", ")}`);
  }
  const files: string[] = [];
  for (const p of paths) {
    const st = await fs.stat(p).catch(() => fail(`No such file or directory: ${p}`));
    if (st.isDirectory()) {
      for (const e of (await fs.readdir(p)).sort()) {
        if (/\.(json|jsonl)$/.test(e)) files.push(path.join(p, e));
      }
    } else files.push(p);
  }
  const report = await importFiles(
    files,
    readText,
    {
      ...(opts.format ? { format: opts.format as ImportFormat } : {}),
      ...(opts.allowEmptyToolResponses ? { validation: { allowEmptyToolResponses: true } } : {}),
    },
  );
  const store = storeFrom(opts);
  if (report.records.length === 0) {
    for (const e of report.errors) printImportError(e);
    fail(
      `nothing imported from ${files.length} file(s); dataset ${opts.name} is unchanged`,
    );
  }
  const { ref, manifest } = await saveDataset(store, opts.name, report.records, {
    sources: report.files.map((f) => ({
      file: f.file,
      format: f.format ?? "unknown",
      imported: f.imported,
      errors: f.errored + (f.failed ? 1 : 0),
    })),
    derivedFrom: { step: "import", parent: null },
    ...(opts.allowEmptyToolResponses ? { validation: { allowEmptyToolResponses: true } } : {}),
  });
  const byFormat = new Map<string, number>();
  for (const f of report.files) {
    byFormat.set(f.format ?? "unknown", (byFormat.get(f.format ?? "unknown") ?? 0) + f.imported);
  }
  const fileErrors = report.errors.filter((e) => e.record.index === undefined);
  const recordErrors = report.errors.filter((e) => e.record.index !== undefined);
  if (fileErrors.length > 0) {
    console.error(`${fileErrors.length} file(s) could not be read as a dataset:`);
    for (const e of fileErrors) printImportError(e);
  }
  if (recordErrors.length > 0) {
    console.error(`${recordErrors.length} record(s) not imported:`);
    for (const e of recordErrors) printImportError(e);
  }
  console.log(
    `imported ${report.records.length} records from ${files.length} file(s) ` +
      `(${[...byFormat].map(([f, n]) => `${f}: ${n}`).join(", ")}), ${report.errors.length} error(s)`,
  );
  console.log(`dataset ${opts.name} v${manifest.version} → ${ref.uri} (${store.url})`);
  if (report.errors.length > 0 && !opts.allowRejects) {
    console.error(
      `error: ${report.errors.length} record(s) rejected (the ${report.records.length} valid ones are saved); ` +
        "pass --allow-rejects to exit 0",
    );
    Deno.exit(1);
  }
}

/** `cm2 data filter`: see its description. */
async function filterCommand(name: string, opts: {
  out?: string;
  disable?: string;
  enable?: string;
  rejected?: string;
  store: string;
  allowEmpty?: boolean;
}): Promise<void> {
  const store = storeFrom(opts);
  const { records } = await loadRecords(store, name);
  const list = (v?: string) => (v ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  for (const d of [...list(opts.disable), ...list(opts.enable)]) {
    if (!FILTER_CRITERIA.includes(d as FilterCriterion)) fail(`Unknown criterion ${JSON.stringify(d)}`);
  }
  // Data without reasoning traces would fail think_tags everywhere: skip it unless the data has them.
  const traces = records.some((r) =>
    r.messages.some((m) => m.role === "assistant" && m.content.includes("<think>"))
  );
  const disabled = [
    ...list(opts.disable),
    ...(traces || list(opts.enable).includes("think_tags") ? [] : ["think_tags"]),
  ];
  const enabled = FILTER_CRITERIA.filter((c) => !disabled.includes(c));
  const result = filterRecords(records, { criteria: enabled });
  console.log(`kept ${result.kept.length} of ${records.length} records`);
  for (const c of FILTER_CRITERIA) {
    const n = result.counts[c];
    const skipped = c === "think_tags" && !traces && !list(opts.disable).includes(c)
      ? "skipped (no <think> tags in the data; --enable think_tags to apply)"
      : "skipped";
    console.log(`  ${c.padEnd(28)} ${enabled.includes(c) ? `${n} rejected` : skipped}`);
  }
  for (const r of result.rejected.slice(0, 50)) {
    console.log(
      `  rejected ${r.uuid}: ${r.reasons.map((x) => `${x.criterion} at ${x.path}: ${x.message}`).join("; ")}`,
    );
  }
  if (result.rejected.length > 50) {
    console.log(`  … and ${result.rejected.length - 50} more (see --rejected)`);
  }
  if (opts.rejected) {
    await Deno.writeTextFile(
      opts.rejected,
      result.rejected.map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    console.log(`rejected records → ${opts.rejected}`);
  }
  if (opts.out) {
    if (result.kept.length === 0 && !opts.allowEmpty) {
      fail(
        `every record was rejected; not writing an empty dataset ${opts.out} (pass --allow-empty to)`,
      );
    }
    const parent = await datasetRef(store, name);
    const { ref } = await saveDataset(store, opts.out, result.kept, {
      sources: [{
        file: name,
        format: "dataset",
        imported: result.kept.length,
        errors: records.length - result.kept.length,
      }],
      derivedFrom: { step: `filter:${enabled.join("+")}`, parent: parent ?? null },
      allowEmpty: opts.allowEmpty ?? false,
    });
    console.log(`dataset ${opts.out} → ${ref.uri}`);
  }
}
