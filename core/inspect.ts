/**
 * Dataset summary for `cm2 inspect`: sizes of the dialogues, tool use, and how much of the data
 * carries checklists and of what kind. Returns a plain object; printing is the caller's. Pure, no I/O.
 *
 * @module
 */
import { type ChecklistItem, FOCUS_ON, type TrajectoryRecord, turnRanges } from "./records.ts";

/** Mean, minimum and maximum of a per-record (or per-turn) quantity; all 0 when there is nothing. */
export interface Stat {
  mean: number;
  min: number;
  max: number;
}

/** What {@linkcode inspectDataset} returns. */
export interface DatasetSummary {
  records: number;
  /** User turns per record. */
  userTurns: Stat;
  /** Assistant messages (steps) per record. */
  assistantSteps: Stat;
  /** Assistant steps per user turn. */
  stepsPerTurn: Stat;
  /** Tool calls per record, and their total. */
  toolCalls: Stat & { total: number; parallelSteps: number };
  /** Distinct tool names called anywhere, and offered anywhere. */
  distinctToolsCalled: number;
  distinctToolsOffered: number;
  /** Tools offered per record. */
  toolsOffered: Stat;
  /** Records with a system message. */
  withSystemMessage: number;
  checklists: ChecklistSummary;
}

/** The checklist part of {@linkcode DatasetSummary} (over every variant of every record). */
export interface ChecklistSummary {
  /** Records with at least one variant. */
  recordsWithVariant: number;
  variants: number;
  items: number;
  /** Items per turn block. */
  itemsPerTurn: Stat;
  /** Items per `focus_on` value. */
  focusMix: Record<(typeof FOCUS_ON)[number], number>;
  /** Share of items with `required_for_next_turn` (0 when there are no items). */
  requiredShare: number;
  /** Items with a program check (answered without the judge). */
  itemsWithChecks: number;
  /** Items with at least one dependency. */
  itemsWithDependencies: number;
  /** Longest dependency chain in any turn (an item without dependencies has depth 0). */
  maxDependencyDepth: number;
}

function stat(values: readonly number[]): Stat {
  if (values.length === 0) return { mean: 0, min: 0, max: 0 };
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  return { mean: Math.round(mean * 1000) / 1000, min: Math.min(...values), max: Math.max(...values) };
}

/** The longest dependency chain among `items` (cycles and unknown ids are not followed). */
export function dependencyDepth(items: readonly Pick<ChecklistItem, "id" | "dependence">[]): number {
  const byId = new Map(items.map((i) => [i.id, i]));
  const memo = new Map<string, number>();
  const depth = (id: string, path: Set<string>): number => {
    const known = memo.get(id);
    if (known !== undefined) return known;
    const item = byId.get(id);
    if (!item || path.has(id)) return 0;
    path.add(id);
    let d = 0;
    for (const dep of item.dependence) {
      if (byId.has(dep) && !path.has(dep)) d = Math.max(d, 1 + depth(dep, path));
    }
    path.delete(id);
    memo.set(id, d);
    return d;
  };
  return Math.max(0, ...items.map((i) => depth(i.id, new Set())));
}

/**
 * Summarises a dataset.
 *
 * @example
 * ```ts
 * const s = inspectDataset(report.records);
 * console.log(`${s.records} records, ${s.checklists.recordsWithVariant} with checklists`);
 * ```
 */
export function inspectDataset(records: readonly TrajectoryRecord[]): DatasetSummary {
  const called = new Set<string>();
  const offered = new Set<string>();
  const turns: number[] = [];
  const steps: number[] = [];
  const stepsPerTurn: number[] = [];
  const calls: number[] = [];
  const toolsOffered: number[] = [];
  let parallelSteps = 0;
  let withSystem = 0;
  const focusMix = Object.fromEntries(FOCUS_ON.map((f) => [f, 0])) as ChecklistSummary["focusMix"];
  const itemsPerTurn: number[] = [];
  let recordsWithVariant = 0;
  let variants = 0;
  let items = 0;
  let required = 0;
  let withDeps = 0;
  let withChecks = 0;
  let maxDepth = 0;

  for (const r of records) {
    const ranges = turnRanges(r.messages);
    turns.push(ranges.length);
    let s = 0;
    let c = 0;
    for (const m of r.messages) {
      if (m.role !== "assistant") continue;
      s++;
      c += m.tool_calls.length;
      if (m.tool_calls.length > 1) parallelSteps++;
      for (const call of m.tool_calls) called.add(call.function.name);
    }
    steps.push(s);
    calls.push(c);
    for (const { start, end } of ranges) {
      stepsPerTurn.push(r.messages.slice(start, end).filter((m) => m.role === "assistant").length);
    }
    toolsOffered.push(r.tools.length);
    for (const t of r.tools) offered.add(t.function.name);
    if (r.messages[0]?.role === "system") withSystem++;
    if (r.checklists.length > 0) recordsWithVariant++;
    for (const variant of r.checklists) {
      variants++;
      for (const block of variant) {
        itemsPerTurn.push(block.length);
        maxDepth = Math.max(maxDepth, dependencyDepth(block));
        for (const item of block) {
          items++;
          focusMix[item.focus_on]++;
          if (item.required_for_next_turn) required++;
          if (item.dependence.length > 0) withDeps++;
          if (item.check) withChecks++;
        }
      }
    }
  }
  return {
    records: records.length,
    userTurns: stat(turns),
    assistantSteps: stat(steps),
    stepsPerTurn: stat(stepsPerTurn),
    toolCalls: { ...stat(calls), total: calls.reduce((a, b) => a + b, 0), parallelSteps },
    distinctToolsCalled: called.size,
    distinctToolsOffered: offered.size,
    toolsOffered: stat(toolsOffered),
    withSystemMessage: withSystem,
    checklists: {
      recordsWithVariant,
      variants,
      items,
      itemsPerTurn: stat(itemsPerTurn),
      focusMix,
      requiredShare: items === 0 ? 0 : Math.round((required / items) * 1000) / 1000,
      itemsWithChecks: withChecks,
      itemsWithDependencies: withDeps,
      maxDependencyDepth: maxDepth,
    },
  };
}
