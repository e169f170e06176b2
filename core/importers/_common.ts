/**
 * Shared pieces of the importers: result and error types, the normalisers that turn the usual
 * variants of OpenAI-style data into the record shape, and the collector that validates each record
 * and keeps exactly one error per bad record. Pure, no I/O.
 *
 * @module
 */
import { createHash } from "node:crypto";
import {
  type ChecklistVariant,
  preview,
  type RecordIssue,
  type TrajectoryRecord,
  TurnBlockSchema,
  validateRecord,
  type ValidationOptions,
  variantFromTurnBlocks,
} from "../records.ts";

/** Where the text being imported came from. */
export interface ImportSource {
  file: string;
  /** Validation options every record of the file is checked with. */
  validation?: ValidationOptions;
}

/** Which input record an error is about: its position, and its id or 1-based line where known. */
export interface RecordRef {
  index?: number;
  id?: string;
  line?: number;
}

/**
 * One precise problem with one input record (or, without `record.index`, with the whole file):
 * the file, the record, the field path inside the record, what is wrong and the offending value.
 */
export interface ImportError {
  file: string;
  record: RecordRef;
  path: string;
  message: string;
  value?: unknown;
  /** How many further problems the same record has. */
  moreIssues?: number;
  /** The first few of them (up to {@linkcode MORE_ISSUES_KEPT}). */
  more?: RecordIssue[];
}

/** How many further problems of one record an error keeps (besides its first). */
export const MORE_ISSUES_KEPT = 4;

/** What an importer returns: every input record lands in exactly one of the two lists. */
export interface ImportResult {
  records: TrajectoryRecord[];
  errors: ImportError[];
}

/** An importer for one format. */
export type Importer = (text: string, source: ImportSource) => ImportResult;

/** Either a normalised value or the first problem found while normalising. */
export type Normalised<T> = { ok: true; value: T } | { ok: false; issue: RecordIssue };

type Obj = Record<string, unknown>;

/** True for a plain JSON object (not null, not an array). */
export function isObject(value: unknown): value is Obj {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A short stable id: `prefix` + the first 16 hex digits of the SHA-256 of `text`. */
export function stableId(prefix: string, text: string): string {
  return `${prefix}${createHash("sha256").update(text).digest("hex").slice(0, 16)}`;
}

/** `JSON.parse` that returns the parsed value or the parser's error message instead of throwing. */
export function parseJson(text: string): { ok: true; value: unknown } | { ok: false; message: string } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (e) {
    return { ok: false, message: e instanceof Error ? e.message : String(e) };
  }
}

/**
 * Converts a tool in the simple `{name, description, parameters}` form to the OpenAI form
 * `{type: "function", function: {…}}` (§1.5); an OpenAI-form tool without `type` gets it.
 * Anything else is returned unchanged for the schema check to reject.
 */
export function normaliseTool(raw: unknown): unknown {
  if (!isObject(raw)) return raw;
  if (isObject(raw.function)) return raw.type === undefined ? { ...raw, type: "function" } : raw;
  if (typeof raw.name === "string") {
    const fn: Obj = { name: raw.name, description: raw.description ?? "" };
    if (raw.parameters !== undefined) fn.parameters = raw.parameters;
    return { type: "function", function: fn };
  }
  return raw;
}

/** Normalises a tool list that may also be a JSON string (the RL form keeps `extra_info.tools` as one). */
export function normaliseTools(raw: unknown, path = "tools"): Normalised<unknown> {
  let value: unknown = raw ?? [];
  if (typeof value === "string") {
    const parsed = parseJson(value);
    if (!parsed.ok) {
      return { ok: false, issue: { path, message: "Tools string is not valid JSON", value: preview(value) } };
    }
    value = parsed.value;
  }
  return { ok: true, value: Array.isArray(value) ? value.map(normaliseTool) : value };
}

function textOfParts(content: unknown[]): string | undefined {
  const texts: string[] = [];
  for (const part of content) {
    if (typeof part === "string") texts.push(part);
    else if (isObject(part) && typeof part.text === "string") texts.push(part.text);
    else return undefined;
  }
  return texts.join("");
}

/**
 * Normalises one OpenAI-style message: `content: null` becomes `""`, text parts are joined,
 * `tool_calls: null` becomes `[]`, a call without `type` gets `"function"` and object arguments
 * are JSON-encoded. Other fields pass through for the schema check.
 */
export function normaliseMessage(raw: unknown): unknown {
  if (!isObject(raw)) return raw;
  const out: Obj = { ...raw };
  if (out.content === null || out.content === undefined) out.content = "";
  else if (Array.isArray(out.content)) out.content = textOfParts(out.content) ?? out.content;
  if (out.tool_calls === null || out.tool_calls === undefined) out.tool_calls = [];
  else if (Array.isArray(out.tool_calls)) {
    out.tool_calls = out.tool_calls.map((call) => {
      if (!isObject(call)) return call;
      const c: Obj = { ...call };
      if (c.type === undefined) c.type = "function";
      if (isObject(c.function) && isObject(c.function.arguments)) {
        c.function = { ...c.function, arguments: JSON.stringify(c.function.arguments) };
      }
      return c;
    });
  }
  if (out.tool_call_id === null) delete out.tool_call_id;
  if (out.name === null) delete out.name;
  return out;
}

/** Normalises a message list (anything that is not an array passes through for the schema check). */
export function normaliseMessages(raw: unknown): unknown {
  return Array.isArray(raw) ? raw.map(normaliseMessage) : raw;
}

/** Removes trailing user messages that no assistant answered; returns the kept list and how many went. */
export function trimTrailingUser<T>(messages: readonly T[]): { messages: T[]; trimmed: number } {
  let end = messages.length;
  while (end > 0) {
    const last = messages[end - 1];
    if (!isObject(last) || last.role !== "user") break;
    end--;
  }
  return { messages: messages.slice(0, end), trimmed: messages.length - end };
}

function isTurnBlock(value: unknown): boolean {
  return isObject(value) && "checklist" in value;
}

function turnBlocksToVariant(blocks: unknown[], base: string): Normalised<ChecklistVariant> {
  const parsed = [];
  for (let b = 0; b < blocks.length; b++) {
    const r = TurnBlockSchema.safeParse(blocks[b]);
    if (!r.success) {
      const iss = r.error.issues[0]!;
      const sub = iss.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("");
      let value: unknown = blocks[b];
      for (const p of iss.path) {
        value = isObject(value) || Array.isArray(value) ? (value as Obj)[p as string] : undefined;
      }
      return {
        ok: false,
        issue: { path: `${base}[${b}]${sub}`, message: iss.message, value: preview(value) },
      };
    }
    const block = r.data;
    const ids = new Set(block.checklist.map((i) => i.id));
    for (const item of block.checklist) {
      if (!(item.id in block.weight)) {
        return {
          ok: false,
          issue: {
            path: `${base}[${b}].weight`,
            message: `Item ${item.id} has no weight in turn ${block.turn}`,
            value: item.id,
          },
        };
      }
    }
    for (const key of [...Object.keys(block.weight), ...Object.keys(block.dependence)]) {
      if (!ids.has(key)) {
        const field = key in block.weight ? "weight" : "dependence";
        return {
          ok: false,
          issue: {
            path: `${base}[${b}].${field}`,
            message: `Map key names no item of turn ${block.turn}`,
            value: key,
          },
        };
      }
    }
    parsed.push(block);
  }
  return { ok: true, value: variantFromTurnBlocks(parsed) };
}

/**
 * Accepts `checklists` as stored variants (item arrays per turn, §1.4), as variants of labeler turn
 * blocks (§1.3, converted with `variantFromTurnBlocks`), or as one bare turn-block variant.
 */
export function normaliseChecklists(raw: unknown, path = "checklists"): Normalised<unknown> {
  if (raw === undefined || raw === null) return { ok: true, value: [] };
  if (!Array.isArray(raw)) return { ok: true, value: raw };
  const variants = raw.length > 0 && raw.every(isTurnBlock) ? [raw] : raw;
  const out: unknown[] = [];
  for (let v = 0; v < variants.length; v++) {
    const variant = variants[v];
    if (Array.isArray(variant) && variant.length > 0 && variant.every(isTurnBlock)) {
      const converted = turnBlocksToVariant(variant, `${path}[${v}]`);
      if (!converted.ok) return converted;
      out.push(converted.value);
    } else out.push(variant);
  }
  return { ok: true, value: out };
}

/**
 * Validates candidate records and files each one as a record or as exactly one error (the first
 * issue, with the count of further ones); a uuid seen before in the same collector is an error too.
 */
export class RecordCollector {
  readonly records: TrajectoryRecord[] = [];
  readonly errors: ImportError[] = [];
  readonly #seen = new Map<string, RecordRef>();

  constructor(readonly file: string, readonly validation: ValidationOptions = {}) {}

  /** Files one problem found before validation. */
  fail(ref: RecordRef, issue: RecordIssue, more: readonly RecordIssue[] = []): void {
    const err: ImportError = { file: this.file, record: ref, path: issue.path, message: issue.message };
    if (issue.value !== undefined) err.value = issue.value;
    if (more.length > 0) {
      err.moreIssues = more.length;
      err.more = more.slice(0, MORE_ISSUES_KEPT);
    }
    this.errors.push(err);
  }

  /** Validates one candidate record and files it. */
  add(ref: RecordRef, raw: unknown): void {
    const v = validateRecord(raw, this.validation);
    if (!v.ok) {
      this.fail(ref, v.issues[0]!, v.issues.slice(1));
      return;
    }
    const first = this.#seen.get(v.record.uuid);
    if (first) {
      const where = first.line !== undefined ? `line ${first.line}` : `record ${first.index ?? 0}`;
      this.fail(ref, {
        path: "uuid",
        message: `Record uuid is not unique, first seen at ${where}`,
        value: v.record.uuid,
      });
      return;
    }
    this.#seen.set(v.record.uuid, ref);
    this.records.push(v.record);
  }

  /** The collected result. */
  result(): ImportResult {
    return { records: this.records, errors: this.errors };
  }
}

/** A record reference with the id added when the raw record carries a usable one. */
export function refOf(index: number, raw: unknown, line?: number): RecordRef {
  const ref: RecordRef = { index };
  if (line !== undefined) ref.line = line;
  if (isObject(raw)) {
    const id = raw.uuid ?? raw.id ?? (isObject(raw.extra_info) ? raw.extra_info.original_index : undefined);
    if (typeof id === "string" || typeof id === "number") ref.id = String(id);
  }
  return ref;
}

/** Splits JSONL text into its non-empty lines with 1-based line numbers. */
export function jsonlLines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  text.split("\n").forEach((raw, i) => {
    const t = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (t.trim() !== "") out.push({ line: i + 1, text: t });
  });
  return out;
}
