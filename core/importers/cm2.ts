/**
 * Importers for CM2 / Nemotron records: a JSON array (or one JSON object) and JSONL, each record
 * `{uuid, messages, tools, checklists?}`, or the RL form of §1.5 (`extra_info.messages`, a JSON-string
 * `extra_info.tools`, `extra_info.interaction_kwargs.checklist_list`). Also the OpenAI chat JSONL
 * format, one `{messages, tools?, id?}` per line. Pure, no I/O.
 *
 * @module
 */
import { preview, type RecordIssue } from "../records.ts";
import {
  type ImportResult,
  type ImportSource,
  isObject,
  jsonlLines,
  normaliseChecklists,
  type Normalised,
  normaliseMessages,
  normaliseTools,
  parseJson,
  RecordCollector,
  refOf,
  stableId,
  trimTrailingUser,
} from "./_common.ts";

/**
 * Maps one raw CM2 record (stored or RL form) to the record shape, without validating it:
 * tools in the simple form become OpenAI tools, turn-block checklists become stored variants.
 */
export function cm2RecordFromRaw(raw: unknown): Normalised<Record<string, unknown>> {
  if (!isObject(raw)) {
    return { ok: false, issue: { path: "$", message: "Record must be a JSON object", value: preview(raw) } };
  }
  const extra = isObject(raw.extra_info) ? raw.extra_info : undefined;
  const rlForm = extra !== undefined && (extra.messages !== undefined || extra.tools !== undefined);
  const kwargs = rlForm && isObject(extra.interaction_kwargs) ? extra.interaction_kwargs : undefined;
  const uuidRaw = raw.uuid ?? (rlForm ? extra.original_index : undefined);
  const tools = normaliseTools(rlForm ? extra.tools : raw.tools, rlForm ? "extra_info.tools" : "tools");
  if (!tools.ok) return tools;
  const checklistsRaw = raw.checklists ?? kwargs?.checklist_list;
  const checklists = normaliseChecklists(
    checklistsRaw,
    raw.checklists === undefined && kwargs ? "extra_info.interaction_kwargs.checklist_list" : "checklists",
  );
  if (!checklists.ok) return checklists;
  const out: Record<string, unknown> = {
    uuid: typeof uuidRaw === "number" ? String(uuidRaw) : uuidRaw,
    tools: tools.value,
    messages: normaliseMessages(rlForm ? extra.messages ?? raw.messages : raw.messages),
    checklists: checklists.value,
  };
  const meta: Record<string, unknown> = isObject(raw.meta) ? { ...raw.meta } : {};
  if (typeof raw.data_source === "string") meta.data_source = raw.data_source;
  if (Object.keys(meta).length > 0) out.meta = meta;
  return { ok: true, value: out };
}

/**
 * Imports a JSON array of CM2 records (a single record object is accepted too).
 *
 * @example
 * ```ts
 * const { records, errors } = importCm2Json(text, { file: "checklist_annotated.json" });
 * ```
 */
export function importCm2Json(text: string, source: ImportSource): ImportResult {
  const out = new RecordCollector(source.file, source.validation);
  const parsed = parseJson(text);
  if (!parsed.ok) {
    out.fail({}, {
      path: "$",
      message: `File is not valid JSON: ${parsed.message}`,
      value: preview(text, 40),
    });
    return out.result();
  }
  const list = Array.isArray(parsed.value) ? parsed.value : [parsed.value];
  list.forEach((raw, index) => {
    const r = cm2RecordFromRaw(raw);
    if (r.ok) out.add(refOf(index, raw), r.value);
    else out.fail(refOf(index, raw), r.issue);
  });
  return out.result();
}

function importLines(
  text: string,
  source: ImportSource,
  toRecord: (raw: unknown, line: string) => Normalised<Record<string, unknown>>,
): ImportResult {
  const out = new RecordCollector(source.file, source.validation);
  jsonlLines(text).forEach(({ line, text: lineText }, index) => {
    const parsed = parseJson(lineText);
    if (!parsed.ok) {
      const issue: RecordIssue = {
        path: "$",
        message: `Line is not valid JSON: ${parsed.message}`,
        value: preview(lineText, 60),
      };
      // Only a top-level `"uuid"` at the start of the line names the record (a nested "id" may be a tool call's).
      const id = /^\s*\{\s*"uuid"\s*:\s*"([^"\\]+)"/.exec(lineText)?.[1];
      out.fail(id === undefined ? { index, line } : { index, line, id }, issue);
      return;
    }
    const r = toRecord(parsed.value, lineText);
    if (r.ok) out.add(refOf(index, parsed.value, line), r.value);
    else out.fail(refOf(index, parsed.value, line), r.issue);
  });
  return out.result();
}

/** Imports CM2 records, one JSON object per line (stored or RL form). */
export function importCm2Jsonl(text: string, source: ImportSource): ImportResult {
  return importLines(text, source, (raw) => cm2RecordFromRaw(raw));
}

/**
 * Imports OpenAI chat JSONL: one `{messages, tools?, id?}` per line. The uuid is `id` when present,
 * else `chat-` + 16 hex digits of the SHA-256 of the line, so re-importing gives the same ids.
 */
export function importOpenAIChatJsonl(text: string, source: ImportSource): ImportResult {
  return importLines(text, source, (raw, line) => {
    if (!isObject(raw)) {
      return {
        ok: false,
        issue: { path: "$", message: "Record must be a JSON object", value: preview(raw) },
      };
    }
    const id = raw.uuid ?? raw.id;
    const r = cm2RecordFromRaw({
      ...raw,
      uuid: typeof id === "string" || typeof id === "number" ? String(id) : stableId("chat-", line),
    });
    // As the ToolTalk and τ-bench importers: a conversation that ends with user messages no assistant answered
    // keeps the rest, and the trim is counted.
    if (r.ok && Array.isArray(r.value.messages)) {
      const trimmed = trimTrailingUser(r.value.messages as { role?: unknown }[]);
      if (trimmed.trimmed > 0) {
        r.value.messages = trimmed.messages;
        r.value.meta = {
          ...(r.value.meta as Record<string, unknown> | undefined),
          trimmed_trailing_user: trimmed.trimmed,
        };
      }
    }
    return r;
  });
}
