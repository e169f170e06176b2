/**
 * `cm2 data import | inspect | filter | split | compress-cot`: datasets in the store, with counts and precise
 * errors. `filter --llm` and `compress-cot` are durable LLM stages (`cli/stage.ts`).
 *
 * @module
 */
import type { Command } from "commander";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { FILTER_CRITERIA, filterRecords } from "../core/filters.ts";
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
import type { ArtifactStore, Ref } from "../store/mod.ts";
import { resolveSplitRules } from "../core/split.ts";
import { contentKey, ruleCriteria, saveFiltered, splitStep } from "../store/dataset_steps.ts";
import { fail, readText, storeFrom } from "./common.ts";
import { EXIT_PAUSED } from "./label.ts";
import { addStageOptions, llmOrRules, registerCompressCot } from "./stage.ts";

/**
 * Loads records from a store dataset name or a dataset file, with what names that version: the manifest ref
 * of a stored dataset, or the sha256 of a file's content.
 */
async function loadRecords(
  store: ArtifactStore,
  nameOrFile: string,
): Promise<{ name: string; records: TrajectoryRecord[]; parent: Ref | null; versionKey: string }> {
  const ref = await datasetRef(store, nameOrFile).catch(() => undefined);
  if (ref) {
    const records = await loadAllRecords(store, await loadManifest(store, ref));
    return { name: nameOrFile, records, parent: ref, versionKey: ref.sha256 };
  }
  let text: string;
  try {
    text = await readText(nameOrFile);
  } catch {
    fail(`No dataset named ${JSON.stringify(nameOrFile)} in ${store.url} and no such file`);
  }
  const report = await importFiles([nameOrFile], () => Promise.resolve(text));
  for (const e of report.errors) printImportError(e);
  const versionKey = contentKey(text);
  return { name: path.basename(nameOrFile), records: report.records, parent: null, versionKey };
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
  const data = program.command("data").description("datasets: import, inspect, filter, split, compress-cot");
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

  const filter = data.command("filter")
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
    .option(
      "--llm",
      "judge each record with the labeler model instead (durable workflow filter/<out>; needs --out)",
    )
    .description(
      "apply CM2's seven rule-based filters; print counts per criterion and each rejected record with its " +
        "reasons (think_tags applies by default only to data that has <think> tags); with --llm, an LLM judge " +
        `of each record's quality (resumable, budgeted; exit code ${EXIT_PAUSED} when paused on its budget)`,
    )
    .action(llmOrRules(filterCommand));
  addStageOptions(filter);
  registerCompressCot(data);

  data.command("split")
    .argument("<dataset>", "dataset name in the store, or a file")
    .requiredOption(
      "--out <prefix>",
      "store the parts as datasets <prefix>-sft, <prefix>-rl, <prefix>-heldout",
    )
    .option("--seed <n>", "seed of the RL and SFT draws", "42")
    .option("--sft <n>", "most records for cold-start SFT", "8000")
    .option("--rl <n>", "most complex records for RL training", "8000")
    .option("--held-out <n>", "complex records held out for validation (fixed per dataset version)", "500")
    .option("--min-turns <m>", "a complex record has at least this many user turns", "2")
    .option("--min-tools <k>", "… and at least this many distinct tools called", "2")
    .option("--store <url>", "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)")
    .description(
      "seeded SFT / RL / held-out split by the paper's rules (RL and held-out: complex records only); prints " +
        "and stores the counts; the RL dataset ends with the held-out records, so `dataset.heldOut` validates " +
        "on exactly them",
    )
    .action(splitCommand);
}

/** `cm2 data split`: see its description. */
async function splitCommand(name: string, opts: {
  out: string;
  seed: string;
  sft: string;
  rl: string;
  heldOut: string;
  minTurns: string;
  minTools: string;
  store: string;
}): Promise<void> {
  const int = (flag: string, v: string) => {
    if (!/^-?\d+$/.test(v)) fail(`--${flag} is ${JSON.stringify(v)}, expected an integer`);
    return Number(v);
  };
  let rules;
  try {
    rules = resolveSplitRules({
      seed: int("seed", opts.seed),
      sft: int("sft", opts.sft),
      rl: int("rl", opts.rl),
      heldOut: int("held-out", opts.heldOut),
      minTurns: int("min-turns", opts.minTurns),
      minTools: int("min-tools", opts.minTools),
    });
  } catch (err) {
    fail((err as Error).message);
  }
  const store = storeFrom(opts);
  const { name: label, records, parent, versionKey } = await loadRecords(store, name);
  const { report, reportRef } = await splitStep(store, {
    source: label,
    records,
    parent,
    versionKey,
    rules,
    out: opts.out,
  });
  const datasets = report.datasets;
  const c = report.counts;
  const at = (d: { name: string; version: number } | null) =>
    d ? ` → ${d.name} v${d.version}` : " (not saved: empty)";
  console.log(
    `split of ${label}: ${c.records} records, ${c.complex} complex (≥ ${rules.minTurns} user turns and ` +
      `≥ ${rules.minTools} distinct tools), seed ${rules.seed}`,
  );
  console.log(`  sft       ${c.sft}${at(datasets.sft)}`);
  console.log(
    `  rl        ${c.rl} + ${c.heldOut} held out at its end${at(datasets.rl)}` +
      (c.heldOut > 0
        ? ` (run config: "dataset": {"path": "${datasets.rl!.name}", "heldOut": ${c.heldOut}})`
        : ""),
  );
  console.log(`  held-out  ${c.heldOut}${at(datasets.heldOut)}`);
  console.log(`  unused    ${c.unused}`);
  console.log(`split report → splits/${opts.out} (${reportRef.uri})`);
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
  let criteria;
  try {
    criteria = ruleCriteria(records, list(opts.disable), list(opts.enable));
  } catch (err) {
    fail((err as Error).message);
  }
  const { enabled, traces } = criteria;
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
      fail(`every record was rejected; not writing an empty dataset ${opts.out} (pass --allow-empty to)`);
    }
    const saved = await saveFiltered(store, {
      source: name,
      kept: result.kept,
      total: records.length,
      parent: (await datasetRef(store, name)) ?? null,
      step: `filter:${enabled.join("+")}`,
      out: opts.out,
      allowEmpty: opts.allowEmpty ?? false,
    });
    console.log(`dataset ${opts.out} → ${saved.ref.uri}`);
  }
}
