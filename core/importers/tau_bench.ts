/**
 * Importer for τ-bench (v1) historical trajectories (`historical_trajectories/<model>-<domain>.json`:
 * an array of `{task_id, trial, reward, info, traj}` with `traj` in OpenAI chat format). Messages are
 * taken as they are (assistant `content: null` becomes `""`); trailing user messages that no assistant
 * answered (the user simulator's closing line, often `###STOP###`) are dropped and counted in
 * `meta.trimmed_trailing_user`. Tools are the domain's v1 tool set. Tool outputs are plain strings
 * (`"Error: …"`, `"Transfer successful"`), not JSON; the import keeps them, and the
 * `tool_response_json_valid` filter counts them. Pure, no I/O.
 *
 * @module
 */
import { preview, type ToolSchema, ToolSchemaSchema } from "../records.ts";
import {
  type ImportResult,
  type ImportSource,
  isObject,
  normaliseMessages,
  parseJson,
  RecordCollector,
  trimTrailingUser,
} from "./_common.ts";

/** The τ-bench v1 tool sets by domain (`airline`, `retail`). */
export type TauBenchCatalog = Record<string, ToolSchema[]>;

/** Options of {@linkcode importTauBench}. */
export interface TauBenchOptions {
  catalog: TauBenchCatalog;
  /** The domain; by default taken from the file name, else from the system prompt. */
  domain?: string;
}

/**
 * Parses `tau_bench_v1_openai_tools.derived.json`: an object with one tool array per domain.
 *
 * @throws {Error} when the text is not such a catalog
 */
export function parseTauBenchCatalog(text: string): TauBenchCatalog {
  const parsed = parseJson(text);
  if (!parsed.ok || !isObject(parsed.value)) throw new Error("Tau-bench tool catalog must be a JSON object");
  const out: TauBenchCatalog = {};
  for (const [domain, tools] of Object.entries(parsed.value)) {
    if (Array.isArray(tools)) out[domain] = tools.map((t) => ToolSchemaSchema.parse(t));
  }
  return out;
}

function baseName(file: string): string {
  const name = file.split(/[\\/]/).pop() ?? file;
  return name.replace(/\.json$/i, "");
}

function detectDomain(file: string, catalog: TauBenchCatalog, traj: unknown): string | undefined {
  const stem = baseName(file).toLowerCase();
  const domains = Object.keys(catalog);
  const byName = domains.find((d) => stem.includes(d.toLowerCase()));
  if (byName) return byName;
  const first = Array.isArray(traj) && isObject(traj[0]) && typeof traj[0].content === "string"
    ? traj[0].content
    : "";
  return domains.find((d) => first.toLowerCase().includes(`# ${d.toLowerCase()}`));
}

/**
 * Imports a τ-bench trajectory file. The uuid is `tau-bench-<file stem>-task<task_id>-trial<trial>`;
 * `meta` keeps the source, domain, task id, trial, reward and the user simulator's instruction.
 */
export function importTauBench(text: string, source: ImportSource, options: TauBenchOptions): ImportResult {
  const out = new RecordCollector(source.file, source.validation);
  const parsed = parseJson(text);
  if (!parsed.ok || !Array.isArray(parsed.value)) {
    const message = parsed.ok
      ? "Tau-bench file must be a JSON array"
      : `File is not valid JSON: ${parsed.message}`;
    out.fail({}, { path: "$", message, value: preview(text, 40) });
    return out.result();
  }
  const stem = baseName(source.file);
  parsed.value.forEach((raw: unknown, index) => {
    if (!isObject(raw) || !Array.isArray(raw.traj)) {
      out.fail({ index }, {
        path: "traj",
        message: "Tau-bench entry must have a traj array",
        value: preview(raw),
      });
      return;
    }
    const uuid = `tau-bench-${stem}-task${String(raw.task_id)}-trial${String(raw.trial)}`;
    const ref = { index, id: uuid };
    const domain = options.domain ?? detectDomain(source.file, options.catalog, raw.traj);
    const tools = domain === undefined ? undefined : options.catalog[domain];
    if (domain === undefined || tools === undefined) {
      out.fail(ref, {
        path: "traj[0].content",
        message: "Cannot tell the tau-bench domain of this file",
        value: domain ?? stem,
      });
      return;
    }
    const normalised = normaliseMessages(raw.traj) as unknown[];
    const trimmed = trimTrailingUser(normalised);
    const info = isObject(raw.info) ? raw.info : {};
    const task = isObject(info.task) ? info.task : {};
    const meta: Record<string, unknown> = {
      source: "tau-bench",
      domain,
      task_id: raw.task_id,
      trial: raw.trial,
      reward: raw.reward,
    };
    if (typeof task.instruction === "string") meta.user_instruction = task.instruction;
    if (trimmed.trimmed > 0) meta.trimmed_trailing_user = trimmed.trimmed;
    out.add(ref, { uuid, tools, messages: trimmed.messages, checklists: [], meta });
  });
  return out.result();
}
