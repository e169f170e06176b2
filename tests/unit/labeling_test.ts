import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import { deriveRuleChecklist } from "../../core/importers/mod.ts";
import {
  canonicalItemId,
  checkLabel,
  checkLabelText,
  extractLabelJson,
  feedbackMessage,
  formatLabelIssue,
  labelingMessages,
  labelingSystemPrompt,
  renderLabelingInput,
  turnBlocksFromVariant,
} from "../../core/labeling.ts";
import {
  type TrajectoryRecord,
  TrajectoryRecordSchema,
  type TurnBlock,
  validateRecord,
  variantFromTurnBlocks,
} from "../../core/records.ts";

const SAMPLE = new URL("../../data/sample/tooltalk_sample.jsonl", import.meta.url);
const records: TrajectoryRecord[] = (await fs.readFile(SAMPLE, "utf8")).trim().split("\n").map((l) =>
  TrajectoryRecordSchema.parse(JSON.parse(l))
);

/** A record with at least two turns and a tool.content item in its first turn. */
const record = records.find((r) => {
  const v = deriveRuleChecklist(r);
  return v.length >= 2 && v[0]!.some((i) => i.focus_on === "tool.content") && v[0]!.length >= 3;
})!;

function validBlocks(): TurnBlock[] {
  return turnBlocksFromVariant(deriveRuleChecklist(record));
}

function errorsOf(raw: unknown): string[] {
  const r = checkLabel(raw, record);
  assert.equal(r.ok, false, "expected the answer to be rejected");
  return r.ok ? [] : r.errors.map(formatLabelIssue);
}

Deno.test("checkLabel() accepts a rule-derived checklist unchanged and without repairs", () => {
  assert.ok(record, "the sample has a suitable record");
  const blocks = validBlocks();
  const r = checkLabel(blocks, record);
  assert.ok(r.ok, r.ok ? "" : r.errors.map(formatLabelIssue).join("\n"));
  assert.deepEqual(r.repairs, {});
  assert.deepEqual(r.variant, deriveRuleChecklist(record));
  const labeled = { ...record, checklists: [r.variant] };
  assert.equal(validateRecord(labeled).ok, true);
});

Deno.test("turnBlocksFromVariant() inverts variantFromTurnBlocks()", () => {
  const variant = deriveRuleChecklist(record);
  assert.deepEqual(variantFromTurnBlocks(turnBlocksFromVariant(variant)), variant);
});

Deno.test("checkLabel() renormalises weights within the tolerance and counts the repair", () => {
  const blocks = validBlocks();
  const ids = Object.keys(blocks[0]!.weight);
  blocks[0]!.weight[ids[0]!] = blocks[0]!.weight[ids[0]!]! + 0.03;
  const r = checkLabel(blocks, record);
  assert.ok(r.ok);
  assert.deepEqual(r.repairs, { "weight-renormalised": 1 });
  const sum = r.variant[0]!.reduce((s, i) => s + i.weight, 0);
  assert.ok(Math.abs(sum - 1) < 1e-9, `sum ${sum}`);
});

Deno.test("checkLabel() rejects weights off by more than the tolerance, naming the turn and the sum", () => {
  const blocks = validBlocks();
  for (const k of Object.keys(blocks[1]!.weight)) blocks[1]!.weight[k] = blocks[1]!.weight[k]! / 2;
  const errors = errorsOf(blocks);
  assert.deepEqual(errors, ["[1].weight: Weights of turn 1 sum to 0.5, expected 1 (found 0.5)"]);
  // A wider tolerance is an option, not a default.
  assert.equal(checkLabel(blocks, record, { weightRepairTolerance: 0.5 }).ok, true);
});

Deno.test("checkLabel() fixes id formats everywhere they are used and counts each renamed item", () => {
  const blocks = validBlocks();
  const b = blocks[0]!;
  const rename = (id: string, to: string | number) => {
    const item = b.checklist.find((i) => i.id === id)!;
    (item as { id: unknown }).id = to;
    b.weight[String(to)] = b.weight[id]!;
    delete b.weight[id];
    b.dependence[String(to)] = b.dependence[id]!;
    delete b.dependence[id];
    for (const deps of Object.values(b.dependence)) {
      deps.forEach((d, k) => d === id && (deps[k] = String(to)));
    }
  };
  rename("C0", "c0");
  rename("C1", 1);
  const r = checkLabel(blocks, record);
  assert.ok(r.ok, r.ok ? "" : r.errors.map(formatLabelIssue).join("\n"));
  assert.deepEqual(r.repairs, { "id-format": 2 });
  assert.deepEqual(r.variant, deriveRuleChecklist(record));
  assert.equal(canonicalItemId("C07"), "C7");
  assert.equal(canonicalItemId("check-1"), "check-1");
});

Deno.test("checkLabel() drops dependencies on unknown or non-tool.content items and counts them", () => {
  const blocks = validBlocks();
  const b = blocks[0]!;
  const nonTool = b.checklist.find((i) => i.focus_on !== "tool.content")!;
  const other = b.checklist.find((i) => i.id !== nonTool.id)!;
  b.dependence[other.id] = [...b.dependence[other.id]!, nonTool.id, "C99", other.id];
  b.dependence.C42 = [];
  b.weight.C42 = 0;
  const r = checkLabel(blocks, record);
  assert.ok(r.ok);
  assert.deepEqual(r.repairs, { "dependency-dropped": 3, "unknown-key-dropped": 2 });
  assert.deepEqual(r.variant, deriveRuleChecklist(record));
});

Deno.test("checkLabel() adds a missing dependence entry and sorts blocks by turn", () => {
  const blocks = validBlocks();
  const first = blocks[0]!.checklist[0]!.id;
  delete blocks[0]!.dependence[first];
  blocks.reverse();
  const r = checkLabel(blocks, record);
  assert.ok(r.ok);
  assert.deepEqual(r.repairs, { "dependence-key-added": 1, "sort-turns": 1 });
  assert.deepEqual(r.variant, deriveRuleChecklist(record));
});

Deno.test("checkLabel() reports shape errors with the path and the value found", () => {
  const blocks = validBlocks() as unknown as Record<string, unknown>[];
  const items = blocks[0]!.checklist as Record<string, unknown>[];
  items[0]!.focus_on = "user.content";
  items[1]!.required_for_next_turn = "yes";
  delete items[1]!.question;
  const errors = errorsOf(blocks);
  assert.equal(errors.length, 3, errors.join("\n"));
  assert.ok(
    errors.some((e) => e.startsWith("[0].checklist[0].focus_on: ") && e.endsWith('(found "user.content")')),
    errors.join("\n"),
  );
  assert.ok(
    errors.some((e) => e.startsWith("[0].checklist[1].required_for_next_turn: ") && e.includes('"yes"')),
  );
  assert.ok(errors.some((e) => e.startsWith("[0].checklist[1].question: ")));
});

Deno.test("checkLabel() requires one block per user turn, numbered from 0", () => {
  const blocks = validBlocks();
  assert.deepEqual(errorsOf(blocks.slice(1).map((b, k) => ({ ...b, turn: k }))), [
    `(root): The answer has ${
      blocks.length - 1
    } turn blocks, the dialogue has ${blocks.length} user turns (found ${blocks.length - 1})`,
  ]);
  const dup = validBlocks();
  dup[1]!.turn = 0;
  const errors = errorsOf(dup);
  assert.ok(errors.includes("[1].turn: Turn 0 has two blocks (found 0)"), errors.join("\n"));
  assert.ok(errors.includes("(root): Turn 1 has no block (found 1)"), errors.join("\n"));
  assert.ok(
    errorsOf([{ turn: 0 }]).includes("[0].checklist: Invalid input: expected array, received undefined"),
  );
  assert.deepEqual(errorsOf("text"), [
    '(root): The answer must be a JSON array with one block per user turn (found "text")',
  ]);
});

Deno.test("checkLabel() rejects items without evidence, bad evidence pointers and duplicate ids", () => {
  const blocks = validBlocks();
  const items = blocks[0]!.checklist;
  items[0]!.evidence = [];
  items[1]!.evidence[0]!.step = 99;
  items[2]!.evidence[0]!.turn = 50;
  blocks[1]!.checklist[1]!.id = blocks[1]!.checklist[0]!.id;
  const errors = errorsOf(blocks);
  const id0 = items[0]!.id;
  assert.ok(
    errors.includes(
      `[0].checklist[0].evidence: Item ${id0} has no evidence, give at least one pointer into the dialogue (found [])`,
    ),
    errors.join("\n"),
  );
  assert.ok(
    errors.some((e) =>
      e.startsWith("[0].checklist[1].evidence[0].step: Evidence points to step 99 of turn 0")
    ),
    errors.join("\n"),
  );
  assert.ok(
    errors.some((e) => e.startsWith("[0].checklist[2].evidence[0].turn: Evidence points to turn 50")),
    errors.join("\n"),
  );
  assert.ok(
    errors.some((e) => e.startsWith("[1].checklist[1].id: Item id C0 is used twice in turn 1")),
    errors.join("\n"),
  );
});

Deno.test("checkLabel() rejects turn or step numbers in item text", () => {
  const blocks = validBlocks();
  blocks[0]!.checklist[0]!.question = "Does the assistant call the tool in step 3?";
  blocks[1]!.checklist[0]!.failure_examples = ["Fails as in the 2nd turn."];
  const errors = errorsOf(blocks);
  assert.equal(errors.length, 2, errors.join("\n"));
  assert.ok(
    errors[0]!.startsWith(
      '[0].checklist[0].question: Item text must not name turn or step numbers ("step 3")',
    ),
  );
  assert.ok(
    errors[1]!.startsWith(
      '[1].checklist[0].failure_examples[0]: Item text must not name turn or step numbers ("2nd turn")',
    ),
  );
});

Deno.test("checkLabel() rejects a missing weight, a negative weight and a turn without items", () => {
  const blocks = validBlocks();
  const [a, b] = blocks[0]!.checklist;
  delete blocks[0]!.weight[a!.id];
  blocks[0]!.weight[b!.id] = -0.1;
  blocks[1]!.checklist = [];
  blocks[1]!.dependence = {};
  blocks[1]!.weight = {};
  const errors = errorsOf(blocks);
  assert.ok(
    errors.includes(`[0].weight: Item ${a!.id} of turn 0 has no weight (found "${a!.id}")`),
    errors.join("\n"),
  );
  assert.ok(
    errors.includes(`[0].weight.${b!.id}: Weight of item ${b!.id} must be between 0 and 1 (found -0.1)`),
    errors.join("\n"),
  );
  assert.ok(
    errors.includes("[1].checklist: Turn 1 has no items, every user turn needs at least one (found [])"),
    errors.join("\n"),
  );
});

Deno.test("checkLabel() rejects a dependency cycle between tool.content items", () => {
  const blocks = validBlocks();
  const b = blocks[0]!;
  const a = b.checklist[0]!;
  const c = b.checklist[1]!;
  a.focus_on = "tool.content";
  c.focus_on = "tool.content";
  b.dependence[a.id] = [c.id];
  b.dependence[c.id] = [a.id];
  const errors = errorsOf(blocks);
  assert.deepEqual(errors, [
    `[0].dependence: Dependencies of turn 0 form a cycle through ${a.id} → ${c.id} → ${a.id} (found "${a.id}")`,
  ]);
});

Deno.test("extractLabelJson() finds the array in fences, prose and think blocks", () => {
  const blocks = validBlocks();
  const json = JSON.stringify(blocks);
  for (
    const text of [
      json,
      `\`\`\`json\n${json}\n\`\`\``,
      `Here you go:\n${json}\nDone.`,
      `<think>[no]</think>${json}`,
    ]
  ) {
    const r = extractLabelJson(text);
    assert.ok(r.ok);
    assert.deepEqual(r.value, blocks);
  }
  const wrapped = checkLabelText(JSON.stringify({ turns: blocks }), record);
  assert.ok(wrapped.ok, "an object wrapping the array (JSON-object mode) is accepted");
  const bad = checkLabelText("I cannot do that", record);
  assert.ok(!bad.ok && bad.errors[0]!.message === "The answer holds no valid JSON");
  const cut = checkLabelText(json.slice(0, 100), record, { truncated: true });
  assert.ok(!cut.ok && cut.errors[0]!.message.includes("cut at the token limit"));
});

Deno.test("labelingMessages() shows turn and step numbers, and on a retry the answer and its errors", () => {
  const input = renderLabelingInput(record);
  assert.ok(input.includes('"turn": 1'), "messages carry turn numbers");
  assert.ok(input.includes('"step": 2'), "messages carry step numbers");
  assert.ok(input.includes(`exactly ${deriveRuleChecklist(record).length} blocks`));
  const prompt = labelingSystemPrompt();
  for (
    const word of [
      "Atomic",
      "observable",
      "Grounded",
      "tool.content",
      "sum to exactly 1",
      "turn number",
      "required_for_next_turn",
    ]
  ) {
    assert.ok(prompt.includes(word), `prompt mentions ${word}`);
  }
  assert.equal(labelingMessages(record).length, 2);
  const errors = [{ path: "[0].weight", message: "Weights of turn 0 sum to 0.5, expected 1", value: 0.5 }];
  const retry = labelingMessages(record, { output: "[]", errors });
  assert.equal(retry.length, 4);
  assert.deepEqual(retry.slice(2).map((m) => m.role), ["assistant", "user"]);
  assert.equal(retry[2]!.content, "[]");
  assert.ok(retry[3]!.content.includes("[0].weight: Weights of turn 0 sum to 0.5, expected 1 (found 0.5)"));
  assert.equal(retry[3]!.content, feedbackMessage(errors));
});
