/**
 * Checking a labeler's answer (CM2 §1.3–1.4), pure: {@linkcode checkLabel} validates the output rule by rule
 * (every problem with its path and value) and applies the few repairs that cannot change what a checklist
 * means, counting each kind; {@linkcode checkLabelText} takes the raw reply. The prompt side is
 * `labeling.ts`, which re-exports everything here.
 *
 * @module
 */
import {
  checkChecklist,
  type ChecklistVariant,
  type Message,
  preview,
  type ToolSchema,
  type TurnBlock,
  TurnBlockSchema,
  turnRanges,
  valueAt,
  variantFromTurnBlocks,
  WEIGHT_TOLERANCE,
} from "./records.ts";
import { validateCheck } from "./checks.ts";

/**
 * Version of the labeling prompt and rules. It is part of every stored label's key, so changing the
 * prompt or the checks means a new version (old labels stay under the old one).
 */
export const LABEL_PROMPT_VERSION = "cm2-label-v2";

/** Repairs that {@linkcode checkLabel} may apply; none of them changes what an item asks. */
export const REPAIR_KINDS = [
  /** An item id like `c1`, `1` or `C01` rewritten as `C1` (everywhere it is used). */
  "id-format",
  /** Turn blocks put in turn order. */
  "sort-turns",
  /** A turn's weights divided by their sum, which was off 1 by at most the repair tolerance. */
  "weight-renormalised",
  /** A dependency dropped: unknown item, the item itself, a repeat, or an item not on `tool.content`. */
  "dependency-dropped",
  /** A missing `dependence` entry of an item added as `[]` (no dependencies). */
  "dependence-key-added",
  /** A `dependence` or `weight` entry naming no item of the turn dropped. */
  "unknown-key-dropped",
] as const;

/** One kind of repair. */
export type RepairKind = (typeof REPAIR_KINDS)[number];

/** How often each repair was applied. */
export type RepairCounts = Partial<Record<RepairKind, number>>;

/** One problem with a labeler answer: where (a JSON path into the answer), what, and the value found. */
export interface LabelIssue {
  path: string;
  message: string;
  value?: unknown;
}

/** Defaults of the labeling checks and retries. */
export const LABEL_DEFAULTS = {
  /** Weights whose sum is off 1 by at most this much are renormalised; beyond it, the answer is retried. */
  weightRepairTolerance: 0.05,
  /** Model calls per (record, variant) before the record is rejected. */
  maxAttempts: 3,
} as const;

/** The result of {@linkcode checkLabel}. */
export type LabelCheck =
  | { ok: true; blocks: TurnBlock[]; variant: ChecklistVariant; repairs: RepairCounts }
  | { ok: false; errors: LabelIssue[]; repairs: RepairCounts };

/** Options of {@linkcode checkLabel}. */
export interface CheckLabelOptions {
  weightRepairTolerance?: number;
}

/** `path: message (found value)`, the form used in feedback, reports and logs. */
export function formatLabelIssue(issue: LabelIssue): string {
  const found = issue.value === undefined ? "" : ` (found ${JSON.stringify(preview(issue.value, 100))})`;
  return `${issue.path}: ${issue.message}${found}`;
}

// ---------------------------------------------------------------------------------------------
// Parsing and checking

const FENCE_RE = /```[a-zA-Z0-9_-]*[ \t]*\r?\n?([\s\S]*?)```/g;
const THINK_RE = /<think>[\s\S]*?<\/think>/g;

function candidates(text: string): string[] {
  const out: string[] = [];
  const add = (s: string | undefined) => {
    const t = s?.trim();
    if (t && !out.includes(t)) out.push(t);
  };
  for (const src of [text, text.replace(THINK_RE, "")]) {
    const t = src.trim();
    add(t);
    for (const m of t.matchAll(FENCE_RE)) add(m[1]);
    const a = t.indexOf("[");
    const b = t.lastIndexOf("]");
    if (a >= 0 && b > a) add(t.slice(a, b + 1));
    const c = t.indexOf("{");
    const d = t.lastIndexOf("}");
    if (c >= 0 && d > c) add(t.slice(c, d + 1));
  }
  return out;
}

/**
 * The JSON value in a labeler's answer: the whole text, fenced blocks, then the widest `[…]` and
 * `{…}` slices (also with `<think>` blocks removed); an array wins over an object.
 */
export function extractLabelJson(
  text: string,
): { ok: true; value: unknown } | { ok: false; error: LabelIssue } {
  let object: unknown;
  for (const c of candidates(text)) {
    let v: unknown;
    try {
      v = JSON.parse(c);
    } catch {
      continue;
    }
    if (Array.isArray(v)) return { ok: true, value: v };
    object ??= v;
  }
  if (object !== undefined) return { ok: true, value: object };
  return {
    ok: false,
    error: {
      path: "(root)",
      message: text.trim() === ""
        ? "The answer is empty, expected a JSON array"
        : "The answer holds no valid JSON",
      value: preview(text, 120),
    },
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** The canonical form of an item id (`c1`, `1`, `C01` → `C1`), or the id itself when it has no such form. */
export function canonicalItemId(id: unknown): unknown {
  if (typeof id === "number" && Number.isInteger(id) && id >= 0) return `C${id}`;
  if (typeof id !== "string") return id;
  const m = /^\s*[cC]?\s*(\d+)\s*$/.exec(id);
  return m ? `C${Number(m[1])}` : id;
}

function renameKeys(map: unknown, rename: (k: string) => string): unknown {
  if (!isObject(map)) return map;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(map)) {
    const key = rename(k);
    // Two spellings of one id: keep the first and let the item checks report the clash.
    if (!(key in out)) out[key] = v;
  }
  return out;
}

/** Unwraps `{ "turns": [...] }`-like answers (JSON-object mode forces an object at the top). */
function unwrapRoot(raw: unknown): unknown {
  if (!isObject(raw)) return raw;
  if ("checklist" in raw && "turn" in raw) return [raw];
  const arrays = Object.values(raw).filter((v) =>
    Array.isArray(v) && v.every((b) => isObject(b) && "checklist" in b)
  );
  return arrays.length === 1 ? arrays[0] : raw;
}

/** Canonicalises item ids in place (items, dependence keys and values, weight keys); counts renamed items. */
function fixIds(blocks: unknown[], repairs: RepairCounts): void {
  const rename = (k: string) => String(canonicalItemId(k));
  for (const block of blocks) {
    if (!isObject(block)) continue;
    if (Array.isArray(block.checklist)) {
      for (const item of block.checklist) {
        if (!isObject(item) || !("id" in item)) continue;
        const fixed = canonicalItemId(item.id);
        if (fixed !== item.id) {
          item.id = fixed;
          bump(repairs, "id-format");
        }
      }
    }
    block.dependence = renameKeys(block.dependence, rename);
    if (isObject(block.dependence)) {
      for (const [k, deps] of Object.entries(block.dependence)) {
        if (Array.isArray(deps)) {
          block.dependence[k] = deps.map((
            d,
          ) => (typeof d === "string" || typeof d === "number" ? canonicalItemId(d) : d));
        }
      }
    }
    block.weight = renameKeys(block.weight, rename);
  }
}

function bump(repairs: RepairCounts, kind: RepairKind, n = 1): void {
  repairs[kind] = (repairs[kind] ?? 0) + n;
}

function pathOf(parts: readonly PropertyKey[]): string {
  let out = "";
  for (const p of parts) {
    if (typeof p === "number") out += `[${p}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(String(p))) out += out === "" ? String(p) : `.${String(p)}`;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}

/** Turn or step numbers in item text: "turn 2", "step #3", "the 2nd step". */
const INDEX_RE = /\b(?:turn|step)s?\s*(?:#|no\.?|number)?\s*\d+\b|\b\d+(?:st|nd|rd|th)\s+(?:turn|step)\b/i;

/**
 * Validates a labeler answer (already parsed JSON) against the record it labels, applying safe
 * repairs. Checks, each reported with its path and value: a top-level array of turn blocks; every
 * field's shape (§1.3); one block per user turn, numbered 0..n-1; at least one item per turn; item ids
 * unique per turn; at least one evidence pointer per item, pointing at an existing turn and step, with
 * a snippet; no turn or step numbers in item text; a weight for every item, none negative, summing to
 * 1 (renormalised when off by at most the tolerance); dependencies only on `tool.content` items of the
 * same turn, without cycles.
 */
export function checkLabel(
  raw: unknown,
  record: { messages: readonly Message[]; tools?: readonly ToolSchema[] },
  opts: CheckLabelOptions = {},
): LabelCheck {
  const tolerance = opts.weightRepairTolerance ?? LABEL_DEFAULTS.weightRepairTolerance;
  const repairs: RepairCounts = {};
  const errors: LabelIssue[] = [];
  const root = unwrapRoot(structuredClone(raw));
  if (!Array.isArray(root)) {
    return {
      ok: false,
      repairs,
      errors: [{
        path: "(root)",
        message: "The answer must be a JSON array with one block per user turn",
        value: preview(root),
      }],
    };
  }
  fixIds(root, repairs);

  // Shapes, with zod's paths.
  const parsed: { block: TurnBlock; at: number }[] = [];
  root.forEach((b, i) => {
    const r = TurnBlockSchema.safeParse(b);
    if (r.success) parsed.push({ block: r.data, at: i });
    else {
      for (const iss of r.error.issues) {
        const keys = iss.code === "unrecognized_keys" ? iss.keys : [];
        errors.push({
          path: pathOf([i, ...iss.path]),
          message: keys.length > 0 ? `Unknown field ${keys.join(", ")}` : iss.message,
          value: preview(valueAt(b, iss.path)),
        });
      }
    }
  });
  if (errors.length > 0) return { ok: false, errors, repairs };

  // Turn order and count.
  const ranges = turnRanges(record.messages);
  const userTurns = ranges.length;
  if (parsed.some((p, k) => k > 0 && parsed[k - 1]!.block.turn > p.block.turn)) {
    parsed.sort((a, b) => a.block.turn - b.block.turn);
    bump(repairs, "sort-turns");
  }
  if (parsed.length !== userTurns) {
    errors.push({
      path: "(root)",
      message: `The answer has ${parsed.length} turn blocks, the dialogue has ${userTurns} user turns`,
      value: parsed.length,
    });
  }
  const seenTurns = new Set<number>();
  for (const { block, at } of parsed) {
    if (block.turn >= userTurns) {
      errors.push({
        path: `[${at}].turn`,
        message: `Turn ${block.turn} does not exist, the dialogue has turns 0 to ${userTurns - 1}`,
        value: block.turn,
      });
    } else if (seenTurns.has(block.turn)) {
      errors.push({ path: `[${at}].turn`, message: `Turn ${block.turn} has two blocks`, value: block.turn });
    }
    seenTurns.add(block.turn);
  }
  for (let t = 0; t < userTurns && parsed.length === userTurns; t++) {
    if (!seenTurns.has(t)) errors.push({ path: "(root)", message: `Turn ${t} has no block`, value: t });
  }

  const tools = record.tools ? new Set(record.tools.map((t) => t.function.name)) : undefined;
  for (const { block, at } of parsed) {
    checkBlock(block, at, ranges, tolerance, errors, repairs);
    block.checklist.forEach((item, c) => {
      if (!item.check) return;
      for (const i of validateCheck(item.check, tools, `[${at}].checklist[${c}].check`)) {
        errors.push({ path: i.path, message: `Item ${item.id}: ${i.message}`, value: preview(i.value) });
      }
    });
  }
  if (errors.length > 0) return { ok: false, errors, repairs };

  const blocks = parsed.map((p) => p.block);
  const variant = variantFromTurnBlocks(blocks);
  // Defensive: the stored form must pass the record checks used everywhere else.
  for (const i of checkChecklist(variant, userTurns, "(stored)")) errors.push(i);
  if (errors.length > 0) return { ok: false, errors, repairs };
  return { ok: true, blocks, variant, repairs };
}

/**
 * Checks one turn block of a labeler's answer, item by item, in the order the labeler's errors are reported back
 * to it (ids, fields, evidence pointers, dependencies, weights, repairs). One pass with many small checks; split
 * into functions it would pass the same half-dozen accumulators around.
 */
function checkBlock(
  block: TurnBlock,
  at: number,
  ranges: readonly { start: number; end: number }[],
  tolerance: number,
  errors: LabelIssue[],
  repairs: RepairCounts,
): void {
  const t = block.turn;
  const base = `[${at}]`;
  if (block.checklist.length === 0) {
    errors.push({
      path: `${base}.checklist`,
      message: `Turn ${t} has no items, every user turn needs at least one`,
      value: [],
    });
    return;
  }
  const focus = new Map<string, string>();
  block.checklist.forEach((item, c) => {
    const at = `${base}.checklist[${c}]`;
    if (focus.has(item.id)) {
      errors.push({
        path: `${at}.id`,
        message: `Item id ${item.id} is used twice in turn ${t}`,
        value: item.id,
      });
    }
    focus.set(item.id, item.focus_on);
    if (item.evidence.length === 0) {
      errors.push({
        path: `${at}.evidence`,
        message: `Item ${item.id} has no evidence, give at least one pointer into the dialogue`,
        value: [],
      });
    }
    item.evidence.forEach((ev, e) => {
      const range = ranges[ev.turn];
      if (!range) {
        errors.push({
          path: `${at}.evidence[${e}].turn`,
          message: `Evidence points to turn ${ev.turn}, the dialogue has turns 0 to ${ranges.length - 1}`,
          value: ev.turn,
        });
      } else if (ev.step >= range.end - range.start) {
        errors.push({
          path: `${at}.evidence[${e}].step`,
          message: `Evidence points to step ${ev.step} of turn ${ev.turn}, which has steps 0 to ${
            range.end - range.start - 1
          }`,
          value: ev.step,
        });
      }
      if (ev.snippet.trim() === "") {
        errors.push({
          path: `${at}.evidence[${e}].snippet`,
          message: "Evidence snippet is empty",
          value: ev.snippet,
        });
      }
    });
    const texts: [string, string][] = [
      ["question", item.question],
      ["pass_condition", item.pass_condition],
      ...item.failure_examples.map((f, k): [string, string] => [`failure_examples[${k}]`, f]),
    ];
    for (const [field, text] of texts) {
      const m = INDEX_RE.exec(text);
      if (m) {
        errors.push({
          path: `${at}.${field}`,
          message: `Item text must not name turn or step numbers ("${
            m[0]
          }"), the graded dialogue is numbered differently`,
          value: preview(text),
        });
      }
    }
  });

  // dependence: one entry per item, only on tool.content items of this turn.
  for (const key of Object.keys(block.dependence)) {
    if (!focus.has(key)) {
      delete block.dependence[key];
      bump(repairs, "unknown-key-dropped");
    }
  }
  for (const id of focus.keys()) {
    const deps = block.dependence[id];
    if (deps === undefined) {
      block.dependence[id] = [];
      bump(repairs, "dependence-key-added");
      continue;
    }
    const kept: string[] = [];
    for (const d of deps) {
      if (d === id || kept.includes(d) || focus.get(d) !== "tool.content") {
        bump(repairs, "dependency-dropped");
      } else kept.push(d);
    }
    block.dependence[id] = kept;
  }
  const cycle = findCycle(block.dependence);
  if (cycle) {
    errors.push({
      path: `${base}.dependence`,
      message: `Dependencies of turn ${t} form a cycle through ${cycle.join(" → ")}`,
      value: cycle[0],
    });
  }

  // weight: one per item, non-negative, summing to 1.
  for (const key of Object.keys(block.weight)) {
    if (!focus.has(key)) {
      delete block.weight[key];
      bump(repairs, "unknown-key-dropped");
    }
  }
  let sum = 0;
  let usable = true;
  for (const id of focus.keys()) {
    const w = block.weight[id];
    if (w === undefined) {
      errors.push({ path: `${base}.weight`, message: `Item ${id} of turn ${t} has no weight`, value: id });
      usable = false;
    } else if (!Number.isFinite(w) || w < 0 || w > 1 + tolerance) {
      errors.push({
        path: `${base}.weight.${id}`,
        message: `Weight of item ${id} must be between 0 and 1`,
        value: w,
      });
      usable = false;
    } else sum += w;
  }
  if (!usable) return;
  const off = Math.abs(sum - 1);
  if (off <= WEIGHT_TOLERANCE) {
    // Rounding noise only; keep the values, but never store a weight above 1.
    if ([...focus.keys()].some((id) => block.weight[id]! > 1)) {
      for (const id of focus.keys()) block.weight[id] = Math.min(1, block.weight[id]!);
    }
    return;
  }
  if (sum > 0 && off <= tolerance) {
    for (const id of focus.keys()) block.weight[id] = block.weight[id]! / sum;
    bump(repairs, "weight-renormalised");
    return;
  }
  errors.push({
    path: `${base}.weight`,
    message: `Weights of turn ${t} sum to ${Number(sum.toFixed(6))}, expected 1`,
    value: Number(sum.toFixed(6)),
  });
}

function findCycle(deps: Record<string, string[]>): string[] | undefined {
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (id: string): string[] | undefined => {
    if (state.get(id) === 2) return undefined;
    if (state.get(id) === 1) return [...stack.slice(stack.indexOf(id)), id];
    state.set(id, 1);
    stack.push(id);
    for (const d of deps[id] ?? []) {
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    state.set(id, 2);
    return undefined;
  };
  for (const id of Object.keys(deps)) {
    const c = visit(id);
    if (c) return c;
  }
  return undefined;
}

/**
 * Extracts and checks a labeler's raw text answer: {@linkcode extractLabelJson}, then
 * {@linkcode checkLabel}. `truncated` (the answer hit the token limit) turns a parse failure into a
 * clearer message.
 */
export function checkLabelText(
  text: string,
  record: { messages: readonly Message[]; tools?: readonly ToolSchema[] },
  opts: CheckLabelOptions & { truncated?: boolean } = {},
): LabelCheck {
  const extracted = extractLabelJson(text);
  if (!extracted.ok) {
    const error = opts.truncated
      ? {
        path: "(root)",
        message: "The answer was cut at the token limit before the JSON ended; write shorter items",
        value: preview(text.slice(-80)),
      }
      : extracted.error;
    return { ok: false, errors: [error], repairs: {} };
  }
  return checkLabel(extracted.value, record, opts);
}

/**
 * The labeler's per-turn block form of a stored variant (the inverse of `variantFromTurnBlocks`):
 * item fields in `checklist`, dependencies and weights in per-turn maps.
 */
export function turnBlocksFromVariant(variant: ChecklistVariant): TurnBlock[] {
  return variant.map((items, turn) => ({
    turn,
    checklist: items.map(({ dependence: _d, weight: _w, extra_info: _e, ...core }) => core),
    dependence: Object.fromEntries(items.map((i) => [i.id, [...i.dependence]])),
    weight: Object.fromEntries(items.map((i) => [i.id, i.weight])),
  }));
}

/** Sums repair counts into a new object. */
export function addRepairs(...counts: RepairCounts[]): RepairCounts {
  const out: RepairCounts = {};
  for (const c of counts) {
    for (const [k, n] of Object.entries(c) as [RepairKind, number][]) bump(out, k, n);
  }
  return out;
}
