import assert from "node:assert/strict";
import {
  type Check,
  CheckSchema,
  checkWindow,
  evaluateCheck,
  parseCheck,
  validateCheck,
  valuesEqual,
} from "../../core/checks.ts";
import type { ChatMessage } from "../../core/llm_types.ts";
import { validateRecord } from "../../core/records.ts";
import { checkLabel } from "../../core/labeling.ts";
import { deriveRuleChecklist } from "../../core/importers/rule_checklist.ts";

const call = (id: string, name: string, args: Record<string, unknown>) => ({
  id,
  type: "function" as const,
  function: { name, arguments: JSON.stringify(args) },
});

/** Turn 0 looks a user up; turn 1 sends a message to the id it returned, then replies. */
const dialogue: ChatMessage[] = [
  { role: "system", content: "You help." },
  { role: "user", content: "Find Ann." },
  { role: "assistant", content: "", tool_calls: [call("c1", "get_user", { name: "Ann" })] },
  { role: "tool", content: '{"user": {"id": "u-42", "tags": ["a", "b"]}}', tool_call_id: "c1" },
  { role: "assistant", content: "Ann is u-42." },
  { role: "user", content: "Message her." },
  { role: "assistant", content: "", tool_calls: [call("c2", "send", { to: "u-42", text: "Hello  THERE" })] },
  { role: "tool", content: '{"error": "mailbox full"}', tool_call_id: "c2" },
  { role: "assistant", content: "<think>failed</think>Sorry, her mailbox is full (u-42)." },
];
const turn1 = (step: number) => checkWindow(dialogue, 5, [6, 8][step]!);
const turn0 = (step: number) => checkWindow(dialogue, 1, [2, 4][step]!);
const check = (pass: unknown): Check => CheckSchema.parse({ v: 1, pass });

Deno.test("a call check reads the window: the turn so far, through the step and its tool results", () => {
  const c = check({ kind: "call", tool: "get_user", equal: { name: { const: "Ann" } } });
  assert.equal(evaluateCheck(c, dialogue, turn0(0)), true);
  assert.equal(evaluateCheck(c, dialogue, turn0(1)), true, "a call earlier in the turn still counts");
  assert.equal(evaluateCheck(c, dialogue, turn1(0)), false, "an earlier turn is not in the window");
  const wrong = check({ kind: "call", tool: "get_user", equal: { name: { const: "Bob" } } });
  assert.equal(evaluateCheck(wrong, dialogue, turn0(0)), false);
});

Deno.test("arguments validate against a JSON schema; values can come from an earlier tool result", () => {
  const schema = check({
    kind: "call",
    tool: "send",
    args: { type: "object", required: ["to", "text"], properties: { to: { pattern: "^u-\\d+$" } } },
  });
  assert.equal(evaluateCheck(schema, dialogue, turn1(0)), true);
  const strict = check({ kind: "call", tool: "send", args: { type: "object", required: ["cc"] } });
  assert.equal(evaluateCheck(strict, dialogue, turn1(0)), false);
  const carried = check({
    kind: "call",
    tool: "send",
    equal: { to: { from_result: { tool: "get_user", path: "user.id" } } },
  });
  assert.equal(evaluateCheck(carried, dialogue, turn1(0)), true);
  const otherPath = check({
    kind: "call",
    tool: "send",
    equal: { to: { from_result: { tool: "get_user", path: "user.tags.0" } } },
  });
  assert.equal(evaluateCheck(otherPath, dialogue, turn1(0)), false);
  const missing = check({
    kind: "call",
    tool: "send",
    equal: { to: { from_result: { tool: "get_user", path: "user.nope" } } },
  });
  assert.equal(evaluateCheck(missing, dialogue, turn1(0)), false, "a value that cannot be found fails");
});

Deno.test("loose equality ignores case and spacing of text and quotes around numbers, nothing else", () => {
  const exact = check({ kind: "call", tool: "send", equal: { text: { const: "hello there" } } });
  const loose = check({ kind: "call", tool: "send", equal: { text: { const: "hello there" } }, loose: true });
  assert.equal(evaluateCheck(exact, dialogue, turn1(0)), false);
  assert.equal(evaluateCheck(loose, dialogue, turn1(0)), true);
  assert.ok(valuesEqual("42", 42, true));
  assert.ok(!valuesEqual("42", 42));
  assert.ok(valuesEqual({ a: [1, "X"] }, { a: [1, "x"] }, true));
  assert.ok(!valuesEqual({ a: [1, "X"] }, { a: [1, "y"] }, true));
  assert.ok(valuesEqual({ b: 1, a: 2 }, { a: 2, b: 1 }), "key order is ignored");
});

Deno.test("returns, no_call, reply and the combinators", () => {
  const ok = check({ kind: "call", tool: "send", returns: "ok" });
  const err = check({ kind: "call", tool: "send", returns: "error" });
  assert.equal(evaluateCheck(ok, dialogue, turn1(0)), false, "the send call returned an error");
  assert.equal(evaluateCheck(err, dialogue, turn1(0)), true);
  assert.equal(evaluateCheck(check({ kind: "no_call", tool: "send" }), dialogue, turn0(1)), true);
  assert.equal(evaluateCheck(check({ kind: "no_call" }), dialogue, turn1(1)), false);

  const reply = check({ kind: "reply", contains: [{ from_result: { tool: "get_user", path: "user.id" } }] });
  assert.equal(evaluateCheck(reply, dialogue, turn0(0)), false, "no reply yet at the calling step");
  assert.equal(evaluateCheck(reply, dialogue, turn0(1)), true);
  const thinkOnly = check({ kind: "reply", matches: "failed" });
  assert.equal(evaluateCheck(thinkOnly, dialogue, turn1(1)), false, "the thinking is not the reply");
  const sorry = check({ kind: "reply", matches: "^sorry", loose: true });
  assert.equal(evaluateCheck(sorry, dialogue, turn1(1)), true);

  const both = check({ kind: "all", of: [{ kind: "call", tool: "send" }, { kind: "not", of: ok.pass }] });
  assert.equal(evaluateCheck(both, dialogue, turn1(1)), true);
  const either = check({ kind: "any", of: [ok.pass, { kind: "no_call", tool: "send" }] });
  assert.equal(evaluateCheck(either, dialogue, turn1(1)), false);
});

Deno.test("a bad check is refused with its path: unknown fields, bad kinds, schemas, patterns, tools, depth", () => {
  const bad = (raw: unknown, tools?: Set<string>) => {
    const r = parseCheck(raw, tools);
    assert.equal(r.ok, false, JSON.stringify(raw));
    return r.ok ? [] : r.issues;
  };
  assert.match(bad({ v: 2, pass: { kind: "no_call" } })[0]!.path, /^check\.v$/);
  assert.match(bad({ v: 1, pass: { kind: "calls", tool: "x" } })[0]!.path, /^check\.pass\.kind$/);
  assert.ok(
    bad({ v: 1, pass: { kind: "call", tool: "x", equals: {} } }).length > 0,
    "a typo is no silent no-op",
  );
  const schema = bad({ v: 1, pass: { kind: "call", tool: "x", args: { type: "nonsense" } } });
  assert.equal(schema[0]!.path, "check.pass.args");
  const pattern = bad({ v: 1, pass: { kind: "reply", matches: "(" } });
  assert.equal(pattern[0]!.path, "check.pass.matches");
  const tool = bad({ v: 1, pass: { kind: "call", tool: "nope" } }, new Set(["get_user"]));
  assert.deepEqual([tool[0]!.path, tool[0]!.value], ["check.pass.tool", "nope"]);
  let deep: unknown = { kind: "no_call" };
  for (let i = 0; i < 5; i++) deep = { kind: "not", of: deep };
  assert.match(bad({ v: 1, pass: deep })[0]!.message, /at most/);
  assert.deepEqual(validateCheck(check({ kind: "call", tool: "get_user" }), new Set(["get_user"])), []);
});

function recordWith(item: Record<string, unknown>) {
  return {
    uuid: "r1",
    tools: [{ type: "function", function: { name: "get_user", parameters: { type: "object" } } }],
    messages: dialogue.slice(0, 5).map((m) => ({ ...m, tool_calls: m.tool_calls ?? [] })),
    checklists: [[[{
      id: "C0",
      evidence: [{ turn: 0, step: 1, from: "assistant.tool_calls", snippet: "get_user" }],
      focus_on: "assistant.tool_calls",
      question: "Does it look Ann up?",
      pass_condition: "A get_user call for Ann.",
      failure_examples: ["No call."],
      required_for_next_turn: true,
      dependence: [],
      weight: 1,
      ...item,
    }]]],
  };
}

Deno.test("import: an invalid check names the record path and the item; a valid one is kept", () => {
  const good = validateRecord(recordWith({ check: { v: 1, pass: { kind: "call", tool: "get_user" } } }));
  assert.ok(good.ok);
  assert.equal(good.record.checklists[0]![0]![0]!.check?.pass.kind, "call");
  const unknownTool = validateRecord(
    recordWith({ check: { v: 1, pass: { kind: "call", tool: "get_usr" } } }),
  );
  assert.ok(!unknownTool.ok);
  assert.equal(unknownTool.issues[0]!.path, "checklists[0][0][0].check.pass.tool");
  assert.match(unknownTool.issues[0]!.message, /Item C0/);
  assert.equal(unknownTool.issues[0]!.value, "get_usr");
  const badShape = validateRecord(recordWith({ check: { v: 1, pass: { kind: "reply", contains: "Ann" } } }));
  assert.ok(!badShape.ok);
  assert.equal(badShape.issues[0]!.path, "checklists[0][0][0].check.pass.contains");
});

Deno.test("labeling: a proposed check is validated against the record's tools like every other field", () => {
  const record = recordWith({});
  const block = (check: unknown) => [{
    turn: 0,
    checklist: [{ ...record.checklists[0]![0]![0]!, dependence: undefined, weight: undefined, check }],
    dependence: { C0: [] },
    weight: { C0: 1 },
  }];
  const clean = (b: unknown) => JSON.parse(JSON.stringify(b));
  const ok = checkLabel(clean(block({ v: 1, pass: { kind: "call", tool: "get_user" } })), record as never);
  assert.ok(ok.ok, JSON.stringify(ok));
  assert.equal(ok.variant[0]![0]!.check?.pass.kind, "call");
  const bad = checkLabel(clean(block({ v: 1, pass: { kind: "call", tool: "find_user" } })), record as never);
  assert.ok(!bad.ok);
  assert.equal(bad.errors[0]!.path, "[0].checklist[0].check.pass.tool");
});

Deno.test("rule checklists: calls get checks (ids carried from results), free text and replies do not", () => {
  const messages = [
    { role: "user" as const, content: "Find Ann and tell her the plan.", tool_calls: [] },
    { role: "assistant" as const, content: "", tool_calls: [call("c1", "get_user", { name: "Ann" })] },
    { role: "tool" as const, content: '{"user": {"id": "u-42"}}', tool_call_id: "c1", tool_calls: [] },
    {
      role: "assistant" as const,
      content: "",
      tool_calls: [call("c2", "send", { to: "u-42", text: "we meet at noon by the old bridge" })],
    },
    { role: "tool" as const, content: '{"sent": true}', tool_call_id: "c2", tool_calls: [] },
    {
      role: "assistant" as const,
      content: "",
      tool_calls: [call("c3", "notify", { to: "u-42", level: 2 })],
    },
    { role: "tool" as const, content: '{"ok": true}', tool_call_id: "c3", tool_calls: [] },
    { role: "assistant" as const, content: "Done, Ann (u-42) knows.", tool_calls: [] },
  ];
  const [items] = deriveRuleChecklist({ messages });
  const byQuestion = (s: string) => items!.filter((i) => i.question.includes(s));
  const [getUser, getUserResult] = byQuestion("get_user");
  assert.deepEqual(getUser!.check, {
    v: 1,
    pass: { kind: "call", tool: "get_user", equal: { name: { const: "Ann" } }, loose: true },
  });
  assert.deepEqual(getUserResult!.check?.pass, { ...getUser!.check!.pass, returns: "ok" });
  assert.equal(byQuestion("send")[0]!.check, undefined, "a free-text argument needs the judge");
  assert.deepEqual(byQuestion("notify")[0]!.check?.pass, {
    kind: "call",
    tool: "notify",
    equal: { to: { from_result: { tool: "get_user", path: "user.id" } }, level: { const: 2 } },
    loose: true,
  });
  assert.equal(items!.find((i) => i.focus_on === "assistant.content.user_visible_reply")!.check, undefined);
});
