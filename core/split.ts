/**
 * The SFT / RL / held-out split of CM2's recipe (§4, App. .1): RL gets complex records (at least `minTurns`
 * user turns and at least `minTools` distinct tools called; single-turn and single-tool cases are excluded),
 * a held-out set is drawn from the same complex pool, and cold-start SFT gets records from the rest. The three
 * parts are disjoint.
 *
 * - The held-out records are fixed per dataset version: they are the complex records with the smallest
 *   sha256(version key + uuid), whatever the seed, so a re-split (another seed, other sizes) of the same
 *   version keeps validating on the same records.
 * - RL and SFT are drawn by a seeded shuffle (default seed 42, the reference's).
 *
 * Pure, no I/O.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { TrajectoryRecord } from "./records.ts";
import { permutation } from "./sampling.ts";

/** How to split; every field has a default ({@linkcode resolveSplitRules}). */
export interface SplitRules {
  /** A record is complex with at least this many user turns (default 2). */
  minTurns: number;
  /** … and at least this many distinct tools called in its reference trajectory (default 2). */
  minTools: number;
  /** Most records for cold-start SFT (default 8 000, the paper's). */
  sft: number;
  /** Most complex records for RL training, held-out excluded (default 8 000). */
  rl: number;
  /** Complex records held out for validation (default 500). */
  heldOut: number;
  /** Seed of the RL and SFT draws (default 42). */
  seed: number;
}

/** The rules with defaults applied; throws on a negative or non-integer size. */
export function resolveSplitRules(
  rules: { [K in keyof SplitRules]?: SplitRules[K] | undefined } = {},
): SplitRules {
  const out: SplitRules = {
    minTurns: 2,
    minTools: 2,
    sft: 8000,
    rl: 8000,
    heldOut: 500,
    seed: 42,
    ...Object.fromEntries(Object.entries(rules).filter(([, v]) => v !== undefined)),
  };
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || (k !== "seed" && v < 0)) {
      throw new Error(`Split rule ${k} is ${v}, expected ${k === "seed" ? "an integer" : "an integer >= 0"}`);
    }
  }
  return out;
}

/** The result of {@linkcode splitRecords}: indices into the input, and the counts. */
export interface Split {
  sft: number[];
  rl: number[];
  heldOut: number[];
  counts: {
    records: number;
    /** Records meeting the complexity rule. */
    complex: number;
    sft: number;
    rl: number;
    heldOut: number;
    /** Records in no part (the sizes were reached). */
    unused: number;
  };
}

/** User turns and distinct tools called of a record's reference trajectory. */
export function complexityOf(record: TrajectoryRecord): { turns: number; tools: number } {
  const tools = new Set<string>();
  let turns = 0;
  for (const m of record.messages) {
    if (m.role === "user") turns++;
    for (const call of m.tool_calls ?? []) tools.add(call.function.name);
  }
  return { turns, tools: tools.size };
}

/**
 * Splits records into SFT, RL and held-out parts by the rules (see the module doc). `versionKey` names the
 * dataset version (its manifest hash, or a file's content hash): it alone fixes the held-out records.
 */
export function splitRecords(
  records: readonly TrajectoryRecord[],
  rules: SplitRules,
  versionKey: string,
): Split {
  const complex: number[] = [];
  records.forEach((r, i) => {
    const { turns, tools } = complexityOf(r);
    if (turns >= rules.minTurns && tools >= rules.minTools) complex.push(i);
  });
  const rank = (i: number) => createHash("sha256").update(`${versionKey}\n${records[i]!.uuid}`).digest("hex");
  const ranked = complex.map((i) => ({ i, key: rank(i) })).sort((a, b) => (a.key < b.key ? -1 : 1));
  const heldOut = ranked.slice(0, rules.heldOut).map((x) => x.i).sort((a, b) => a - b);
  const taken = new Set(heldOut);
  const shuffled = (pool: number[], salt: number) =>
    permutation(rules.seed ^ salt, pool.length).map((k) => pool[k]!);
  const rl = shuffled(complex.filter((i) => !taken.has(i)), 0x52_4c).slice(0, rules.rl);
  for (const i of rl) taken.add(i);
  const rest = records.map((_, i) => i).filter((i) => !taken.has(i));
  const sft = shuffled(rest, 0x53_46_54).slice(0, rules.sft);
  return {
    sft,
    rl,
    heldOut,
    counts: {
      records: records.length,
      complex: complex.length,
      sft: sft.length,
      rl: rl.length,
      heldOut: heldOut.length,
      unused: records.length - sft.length - rl.length - heldOut.length,
    },
  };
}
