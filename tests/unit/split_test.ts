import assert from "node:assert/strict";
import { complexityOf, resolveSplitRules, splitRecords } from "../../core/split.ts";
import type { TrajectoryRecord } from "../../core/records.ts";

/** A record with `turns` user turns, each answered after one call to each of `tools`. */
function rec(uuid: string, turns: number, tools: string[]): TrajectoryRecord {
  const messages: TrajectoryRecord["messages"] = [];
  for (let t = 0; t < turns; t++) {
    messages.push({ role: "user", content: `q${t}`, tool_calls: [] });
    tools.forEach((name, k) => {
      const id = `c${t}_${k}`;
      messages.push({
        role: "assistant",
        content: "",
        tool_calls: [{ id, type: "function", function: { name, arguments: "{}" } }],
      });
      messages.push({ role: "tool", content: "{}", tool_call_id: id, tool_calls: [] });
    });
    messages.push({ role: "assistant", content: "done", tool_calls: [] });
  }
  return { uuid, tools: [], messages, checklists: [] };
}

// 30 complex (2-4 turns, 2-3 tools), 10 single-turn, 10 single-tool
const RECORDS = [
  ...Array.from({ length: 30 }, (_, i) => rec(`c${i}`, 2 + (i % 3), i % 2 ? ["a", "b"] : ["a", "b", "c"])),
  ...Array.from({ length: 10 }, (_, i) => rec(`t${i}`, 1, ["a", "b"])),
  ...Array.from({ length: 10 }, (_, i) => rec(`o${i}`, 3, ["a"])),
];
const uuids = (idx: number[], records = RECORDS) => idx.map((i) => records[i]!.uuid);

Deno.test("complexityOf() counts user turns and distinct tools called", () => {
  assert.deepEqual(complexityOf(rec("x", 3, ["a", "b", "a"])), { turns: 3, tools: 2 });
  assert.deepEqual(complexityOf(rec("y", 1, [])), { turns: 1, tools: 0 });
});

Deno.test("splitRecords() gives RL and held-out only complex records, disjoint parts, the asked sizes", () => {
  const rules = resolveSplitRules({ sft: 15, rl: 20, heldOut: 5 });
  const s = splitRecords(RECORDS, rules, "v1");
  assert.deepEqual(s.counts, { records: 50, complex: 30, sft: 15, rl: 20, heldOut: 5, unused: 10 });
  for (const u of [...uuids(s.rl), ...uuids(s.heldOut)]) assert.ok(u.startsWith("c"), u);
  const all = [...s.sft, ...s.rl, ...s.heldOut];
  assert.equal(new Set(all).size, all.length, "disjoint");
  // SFT takes what RL and held-out leave: the 5 leftover complex records are in its pool too
  const big = splitRecords(RECORDS, resolveSplitRules({ sft: 100, rl: 20, heldOut: 5 }), "v1");
  assert.equal(big.counts.sft, 25);
  assert.equal(big.counts.unused, 0);
});

Deno.test("splitRecords() fixes the held-out records per dataset version, whatever the seed, sizes or order", () => {
  const base = splitRecords(RECORDS, resolveSplitRules({ heldOut: 5 }), "v1");
  const reseeded = splitRecords(RECORDS, resolveSplitRules({ heldOut: 5, seed: 7, rl: 3, sft: 2 }), "v1");
  const reversed = [...RECORDS].reverse();
  const reordered = splitRecords(reversed, resolveSplitRules({ heldOut: 5 }), "v1");
  const held = uuids(base.heldOut).sort();
  assert.deepEqual(uuids(reseeded.heldOut).sort(), held);
  assert.deepEqual(uuids(reordered.heldOut, reversed).sort(), held);
  // the seed does move the RL draw; another version moves the held-out set
  assert.notDeepEqual(uuids(reseeded.rl), uuids(base.rl).slice(0, 3));
  assert.notDeepEqual(
    uuids(splitRecords(RECORDS, resolveSplitRules({ heldOut: 5 }), "v2").heldOut).sort(),
    held,
  );
  // and the same inputs give the same split
  assert.deepEqual(splitRecords(RECORDS, resolveSplitRules({ heldOut: 5 }), "v1"), base);
});

Deno.test("resolveSplitRules() names a bad size", () => {
  assert.throws(() => resolveSplitRules({ rl: -1 }), /Split rule rl is -1, expected an integer >= 0/);
  assert.throws(() => resolveSplitRules({ minTurns: 1.5 }), /Split rule minTurns is 1.5/);
});
