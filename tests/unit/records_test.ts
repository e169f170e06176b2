import assert from "node:assert/strict";
import {
  type ChecklistItem,
  countUserTurns,
  type Message,
  type RecordIssue,
  turnRanges,
  validateRecord,
  variantFromTurnBlocks,
} from "../../core/records.ts";

type Msg = { role: Message["role"]; content: string; tool_calls?: unknown[]; tool_call_id?: string };

const call = (id: string, args = '{"city":"Paris"}') => ({
  id,
  type: "function",
  function: { name: "get_weather", arguments: args },
});
const TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather.",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];
const u = (content = "hi"): Msg => ({ role: "user", content });
const a = (content = "ok", calls: unknown[] = []): Msg => ({ role: "assistant", content, tool_calls: calls });
const t = (id: string, content = '{"temp":1}'): Msg => ({ role: "tool", content, tool_call_id: id });

function item(
  id: string,
  focus: ChecklistItem["focus_on"],
  weight: number,
  dependence: string[] = [],
): ChecklistItem {
  return {
    id,
    evidence: [],
    focus_on: focus,
    question: `${id}?`,
    pass_condition: id,
    failure_examples: [],
    required_for_next_turn: false,
    dependence,
    weight,
  };
}
const goodTurn = () => [
  item("C0", "assistant.tool_calls", 0.5),
  item("C1", "tool.content", 0.2),
  item("C2", "assistant.content.user_visible_reply", 0.3, ["C1"]),
];
const MESSAGES = [u(), a("", [call("c1")]), t("c1"), a("done"), u("more"), a("sure")];

function record(over: Record<string, unknown> = {}) {
  return { uuid: "r1", tools: TOOLS, messages: MESSAGES, checklists: [], ...over };
}

function issues(raw: unknown): RecordIssue[] {
  const v = validateRecord(raw);
  return v.ok ? [] : v.issues;
}

Deno.test("validateRecord() accepts a well-formed record and fills defaults", () => {
  const v = validateRecord(
    record({ checklists: [[goodTurn(), [item("C0", "assistant.content.user_visible_reply", 1)]]] }),
  );
  assert.ok(v.ok);
  assert.deepEqual(v.record.messages[0]!.tool_calls, []);
  assert.equal(v.record.meta, undefined);
  const withMeta = validateRecord(record({ meta: { source: "x", reward: 1 } }));
  assert.ok(withMeta.ok && withMeta.record.meta?.reward === 1);
});

Deno.test("validateRecord() reports shape errors with their path and value", () => {
  assert.deepEqual(issues(record({ uuid: "" }))[0]!.path, "uuid");
  const bad = issues(record({ messages: [{ role: "robot", content: "x" }] }));
  assert.equal(bad[0]!.path, "messages[0].role");
  assert.equal(bad[0]!.value, "robot");
  assert.equal(issues(record({ messages: [] }))[0]!.path, "messages");
  assert.equal(
    issues(record({ tools: [{ type: "function", function: { name: "" } }] }))[0]!.path,
    "tools[0].function.name",
  );
});

Deno.test("validateRecord() allows a system message only at index 0", () => {
  assert.deepEqual(issues(record({ messages: [{ role: "system", content: "s" }, ...MESSAGES] })), []);
  assert.deepEqual(issues(record({ messages: [u(), { role: "system", content: "s" }, a()] })).slice(1), [{
    path: "messages[1].role",
    message: "A system message may appear only at index 0",
    value: "system",
  }]);
});

Deno.test("validateRecord() requires the first non-system message to be user", () => {
  assert.deepEqual(issues(record({ messages: [a(), u(), a()] }))[0], {
    path: "messages[0].role",
    message: "First non-system message must be user",
    value: "assistant",
  });
});

Deno.test("validateRecord() requires an assistant message after every user message", () => {
  assert.deepEqual(issues(record({ messages: [u(), u(), a()] })), [{
    path: "messages[1].role",
    message: "A user message must be followed by an assistant message",
    value: "user",
  }]);
  assert.deepEqual(issues(record({ messages: [u(), a(), u()] }))[0]!.value, "end of dialogue");
});

Deno.test("validateRecord() requires k tool messages after an assistant message with k calls", () => {
  assert.deepEqual(issues(record({ messages: [u(), a("", [call("c1"), call("c2")]), t("c1"), a()] }))[0], {
    path: "messages[3].role",
    message: "Tool call 1 (get_weather) of messages[1] has no tool response",
    value: "assistant",
  });
  assert.deepEqual(issues(record({ messages: [u(), a("", [call("c1")])] }))[0]!.value, "end of dialogue");
});

Deno.test("validateRecord() requires tool responses in call order by tool_call_id", () => {
  const msgs = [u(), a("", [call("c1"), call("c2")]), t("c2"), t("c1"), a()];
  assert.deepEqual(issues(record({ messages: msgs }))[0], {
    path: "messages[2].tool_call_id",
    message: "Tool response does not answer call 0 of messages[1] (id c1)",
    value: "c2",
  });
});

Deno.test("validateRecord() rejects a tool message that answers no call", () => {
  assert.deepEqual(issues(record({ messages: [u(), a("", [call("c1")]), t("c1"), t("c9"), a()] }))[0], {
    path: "messages[3].role",
    message: "Tool responses must be followed by an assistant message",
    value: "tool",
  });
  assert.deepEqual(
    issues(record({ messages: [u(), a(), t("x")] }))[0]!.message,
    "An assistant reply without tool calls must be followed by a user message or the end",
  );
});

Deno.test("validateRecord() requires tool responses to be followed by an assistant message", () => {
  assert.deepEqual(issues(record({ messages: [u(), a("", [call("c1")]), t("c1"), u()] }))[0], {
    path: "messages[3].role",
    message: "Tool responses must be followed by an assistant message",
    value: "user",
  });
});

Deno.test("validateRecord() requires a reply to be followed by a user message or the end", () => {
  assert.deepEqual(issues(record({ messages: [u(), a("one"), a("two")] }))[0], {
    path: "messages[2].role",
    message: "An assistant reply without tool calls must be followed by a user message or the end",
    value: "assistant",
  });
});

Deno.test("validateRecord() requires tool-call arguments that decode to a JSON object", () => {
  assert.deepEqual(issues(record({ messages: [u(), a("", [call("c1", "{city")]), t("c1"), a()] })), [{
    path: "messages[1].tool_calls[0].function.arguments",
    message: "Tool call arguments are not valid JSON",
    value: "{city",
  }]);
  assert.equal(
    issues(record({ messages: [u(), a("", [call("c1", "[1]")]), t("c1"), a()] }))[0]!.message,
    "Tool call arguments must decode to a JSON object",
  );
});

Deno.test("validateRecord() requires unique tool names", () => {
  assert.deepEqual(issues(record({ tools: [...TOOLS, ...TOOLS] })), [{
    path: "tools[1].function.name",
    message: "Tool names must be unique within a record",
    value: "get_weather",
  }]);
});

Deno.test("validateRecord() requires one checklist block per user turn", () => {
  assert.deepEqual(issues(record({ checklists: [[goodTurn()]] })), [{
    path: "checklists[0]",
    message: "Checklist has 1 turn blocks, expected one per user turn (2)",
    value: 1,
  }]);
});

Deno.test("validateRecord() requires turn weights summing to 1 within 1e-6", () => {
  const light = goodTurn();
  light[2]!.weight = 0.1;
  assert.deepEqual(issues(record({ checklists: [[light, [item("C0", "tool.content", 1)]]] })), [{
    path: "checklists[0][0]",
    message: "Checklist weights of turn 0 sum to 0.8, expected 1",
    value: 0.8,
  }]);
  const close = goodTurn();
  close[2]!.weight = 0.3 + 5e-7;
  assert.deepEqual(issues(record({ checklists: [[close, [item("C0", "tool.content", 1)]]] })), []);
  assert.deepEqual(issues(record({ checklists: [[[], []]] })), [], "an empty turn has no sum to check");
});

Deno.test("validateRecord() requires unique item ids within a turn", () => {
  const dup = goodTurn();
  dup[1]!.id = "C0";
  dup[2]!.dependence = [];
  assert.deepEqual(issues(record({ checklists: [[dup, [item("C0", "tool.content", 1)]]] }))[0], {
    path: "checklists[0][0][1].id",
    message: "Item id is not unique in turn 0",
    value: "C0",
  });
});

Deno.test("validateRecord() requires dependencies on existing tool.content items of the same turn", () => {
  const check = (deps: string[]) => {
    const turn = goodTurn();
    turn[2]!.dependence = deps;
    return issues(record({ checklists: [[turn, [item("C0", "tool.content", 1)]]] }));
  };
  assert.deepEqual(check(["C7"]), [{
    path: "checklists[0][0][2].dependence[0]",
    message: "Dependency names no item of turn 0",
    value: "C7",
  }]);
  assert.deepEqual(check(["C2"])[0], {
    path: "checklists[0][0][2].dependence[0]",
    message: "An item cannot depend on itself",
    value: "C2",
  });
  assert.deepEqual(check(["C0"])[0], {
    path: "checklists[0][0][2].dependence[0]",
    message: "Dependency must be a tool.content item, C0 focuses on assistant.tool_calls",
    value: "C0",
  });
});

Deno.test("validateRecord() rejects cyclic dependencies", () => {
  const turn = [item("C0", "tool.content", 0.5, ["C1"]), item("C1", "tool.content", 0.5, ["C0"])];
  assert.deepEqual(issues(record({ checklists: [[turn, [item("C0", "tool.content", 1)]]] })), [{
    path: "checklists[0][0]",
    message: "Dependencies of turn 0 form a cycle through C0",
    value: "C0",
  }]);
});

Deno.test("variantFromTurnBlocks() sorts blocks by turn and moves the maps onto items", () => {
  const core = (id: string) => {
    const { dependence: _d, weight: _w, ...rest } = item(id, "tool.content", 0);
    return rest;
  };
  const variant = variantFromTurnBlocks([
    { turn: 1, checklist: [core("C0")], dependence: { C0: [] }, weight: { C0: 1 } },
    {
      turn: 0,
      checklist: [core("C0"), core("C1")],
      dependence: { C1: ["C0"] },
      weight: { C0: 0.4, C1: 0.6 },
    },
  ]);
  assert.deepEqual(variant.map((b) => b.map((i) => [i.id, i.weight, i.dependence])), [
    [["C0", 0.4, []], ["C1", 0.6, ["C0"]]],
    [["C0", 1, []]],
  ]);
});

Deno.test("turnRanges() and countUserTurns() split messages at user messages", () => {
  const msgs: Pick<Message, "role">[] = [{ role: "system" }, ...MESSAGES];
  assert.equal(countUserTurns(msgs), 2);
  assert.deepEqual(turnRanges(msgs), [{ start: 1, end: 5 }, { start: 5, end: 7 }]);
});

Deno.test("validateRecord() refuses a call to a tool the record does not offer", () => {
  const found = issues(record({ tools: [] }));
  assert.ok(
    found.some((i) =>
      /does not offer/.test(i.message) && i.value === "get_weather" && /tool_calls\[0\]/.test(i.path)
    ),
    JSON.stringify(found),
  );
  assert.deepEqual(issues(record()), []);
});

Deno.test("validateRecord() refuses an empty tool response unless allowed", () => {
  const empty = record({ messages: [MESSAGES[0], MESSAGES[1], t("c1", ""), ...MESSAGES.slice(3)] });
  assert.ok(
    issues(empty).some((i) => /Tool response is empty/.test(i.message)),
    JSON.stringify(issues(empty)),
  );
  assert.ok(validateRecord(empty, { allowEmptyToolResponses: true }).ok);
});
