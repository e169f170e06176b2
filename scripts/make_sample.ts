/**
 * Regenerates `data/sample/tooltalk_sample.jsonl`: ten multi-turn ToolTalk conversations (three easy,
 * seven hard) imported with the ToolTalk importer and given one checklist variant derived by rule
 * from the reference trajectory (`core/importers/rule_checklist.ts`, no LLM). Deterministic: the same
 * benchdata gives the same bytes.
 *
 * Usage: `deno run --allow-read --allow-write scripts/make_sample.ts [--benchdata DIR] [--out FILE] [--check]`
 * (`--check` compares with the existing file instead of writing it, and fails when they differ).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { deriveRuleChecklist, formatImportError, importFiles } from "../core/importers/mod.ts";
import { validateRecord } from "../core/records.ts";

/** The conversations of the sample, as `<folder>/<file stem>` under ToolTalk's `data/`. */
export const SAMPLE_CONVERSATIONS = [
  "easy/ChangePassword-easy",
  "easy/SendEmail-easy",
  "easy/UserLogin-easy",
  "tooltalk/AccountTools-Alarm-Calendar-AddAlarm-0",
  "tooltalk/AccountTools-Email-Reminder-ChangePassword-1",
  "tooltalk/Alarm-Messages-Reminder-GetReminder-2",
  "tooltalk/Calendar-Messages-Reminder-CreateEvent-1",
  "tooltalk/Calendar-Messages-Weather-SendMessage-1",
  "tooltalk/Messages-Reminder-Weather-ForecastWeather-1",
  "tooltalk/golden_conversation_1",
] as const;

/** Builds the sample's JSONL text from the ToolTalk folder (`<benchdata>/tooltalk`). */
export async function buildSample(
  tooltalkDir: string,
  readText: (p: string) => Promise<string>,
): Promise<string> {
  const paths = SAMPLE_CONVERSATIONS.map((c) => `${tooltalkDir}/data/${c}.json`);
  const report = await importFiles(paths, readText, { format: "tooltalk" });
  if (report.errors.length > 0) {
    throw new Error(`Sample import failed: ${report.errors.map(formatImportError).join("; ")}`);
  }
  const lines = report.records.map((record) => {
    const labeled = {
      ...record,
      checklists: [deriveRuleChecklist(record)],
      meta: { ...record.meta, checklist_source: "rule (core/importers/rule_checklist.ts)" },
    };
    const v = validateRecord(labeled);
    if (!v.ok) {
      throw new Error(`Sample record ${record.uuid} does not validate: ${JSON.stringify(v.issues[0])}`);
    }
    return JSON.stringify(v.record);
  });
  return `${lines.join("\n")}\n`;
}

if (import.meta.main) {
  const args = [...Deno.args];
  const opt = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const benchdata = opt("--benchdata") ?? fileURLToPath(new URL("../../shared/benchdata", import.meta.url));
  const out = opt("--out") ?? fileURLToPath(new URL("../data/sample/tooltalk_sample.jsonl", import.meta.url));
  const text = await buildSample(`${benchdata}/tooltalk`, (p) => Deno.readTextFile(p));
  if (args.includes("--check")) {
    const current = await Deno.readTextFile(out).catch(() => "");
    if (current !== text) {
      console.error(`${out} is out of date: run scripts/make_sample.ts`);
      Deno.exit(1);
    }
    console.log(`${out} is up to date`);
  } else {
    await Deno.writeTextFile(out, text);
    console.log(`Wrote ${SAMPLE_CONVERSATIONS.length} records to ${out}`);
  }
}
