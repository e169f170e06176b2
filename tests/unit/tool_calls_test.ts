import assert from "node:assert/strict";
import {
  formatToolCallText,
  isErrorToolContent,
  parseStructuredToolCalls,
  parseToolCallText,
  stripToolCallBlocks,
  toChatToolCalls,
  toolCallErrorContent,
} from "../../core/tool_calls.ts";

const THINK = "<think>\nI should look it up.\n</think>\n";

function errorOf(parse: ReturnType<typeof parseToolCallText>): string {
  assert.equal(parse.kind, "error");
  return parse.kind === "error" ? parse.message : "";
}

Deno.test("parseToolCallText() returns none for a plain reply", () => {
  assert.deepEqual(parseToolCallText(`${THINK}\nThe answer is 4.`), { kind: "none" });
});

Deno.test("parseToolCallText() parses one well-formed call with a trimmed name", () => {
  const text =
    `${THINK}\n<tool_call>\n{"name": " get_weather ", "arguments": {"city": "Paris"}}\n</tool_call>`;
  assert.deepEqual(parseToolCallText(text, "call_3"), {
    kind: "calls",
    calls: [{ id: "call_3_0", name: "get_weather", arguments: { city: "Paris" } }],
  });
});

Deno.test("parseToolCallText() parses several blocks and an array block, preferring parameters", () => {
  const text = `${THINK}\n<tool_call>\n[{"name": "a", "parameters": {"x": 1}, "arguments": {"x": 2}}, ` +
    `{"name": "b", "arguments": {}}]\n</tool_call>\n<tool_call>\n{"name": "c", "arguments": {"y": [1]}}\n</tool_call>`;
  const parse = parseToolCallText(text);
  assert.equal(parse.kind, "calls");
  if (parse.kind !== "calls") return;
  assert.deepEqual(parse.calls.map((c) => [c.id, c.name, c.arguments]), [
    ["call_0", "a", { x: 1 }],
    ["call_1", "b", {}],
    ["call_2", "c", { y: [1] }],
  ]);
});

Deno.test("parseToolCallText() requires the newlines around the tags", () => {
  const msg = errorOf(parseToolCallText(`${THINK}<tool_call>{"name": "a", "arguments": {}}</tool_call>`));
  assert.match(msg, /no well-formed call/);
  errorOf(parseToolCallText(`${THINK}\n<tool_call>\n{"name": "a", "arguments": {}}</tool_call>`));
});

Deno.test("parseToolCallText() rejects bad JSON, bad names, missing and non-object arguments", () => {
  assert.match(
    errorOf(parseToolCallText('\n<tool_call>\n{"name": "a", arguments: {}}\n</tool_call>')),
    /not valid JSON/,
  );
  assert.match(
    errorOf(parseToolCallText('\n<tool_call>\n{"name": "  ", "arguments": {}}\n</tool_call>')),
    /no valid name/,
  );
  assert.match(errorOf(parseToolCallText('\n<tool_call>\n{"name": "a"}\n</tool_call>')), /has no arguments/);
  assert.match(
    errorOf(parseToolCallText('\n<tool_call>\n{"name": "a", "arguments": "{\\"x\\": 1}"}\n</tool_call>')),
    /must be a JSON object/,
  );
  assert.match(
    errorOf(parseToolCallText('\n<tool_call>\n{"name": "a", "arguments": [1]}\n</tool_call>')),
    /JSON object/,
  );
  assert.match(errorOf(parseToolCallText("\n<tool_call>\n[1, 2]\n</tool_call>")), /must be a JSON object/);
  assert.match(errorOf(parseToolCallText("\n<tool_call>\n[]\n</tool_call>")), /empty array/);
  // one bad block spoils the step, even next to a good one
  errorOf(
    parseToolCallText(
      '\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\nnope\n</tool_call>',
    ),
  );
});

Deno.test("parseStructuredToolCalls() decodes API tool calls and rejects non-object arguments", () => {
  const ok = parseStructuredToolCalls([
    { id: "x1", type: "function", function: { name: "a", arguments: '{"k": "v"}' } },
    { id: "", type: "function", function: { name: "b", arguments: "" } },
  ], "call_5");
  assert.deepEqual(ok, {
    kind: "calls",
    calls: [{ id: "x1", name: "a", arguments: { k: "v" } }, { id: "call_5_1", name: "b", arguments: {} }],
  });
  assert.equal(parseStructuredToolCalls([]).kind, "none");
  const bad = parseStructuredToolCalls([{
    id: "x",
    type: "function",
    function: { name: "a", arguments: "[1]" },
  }]);
  assert.equal(bad.kind, "error");
  const broken = parseStructuredToolCalls([{
    id: "x",
    type: "function",
    function: { name: "a", arguments: "{" },
  }]);
  assert.equal(broken.kind, "error");
});

Deno.test("formatToolCallText() writes the wire format that parseToolCallText() reads back", () => {
  const calls = [{ name: "f", arguments: { q: "café" } }, { name: "g", arguments: {} }];
  const text = formatToolCallText(calls);
  assert.equal(
    text,
    '\n<tool_call>\n{"name": "f", "arguments": {"q": "café"}}\n</tool_call>' +
      '\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
  );
  const back = parseToolCallText(THINK + text);
  assert.equal(back.kind, "calls");
  if (back.kind === "calls") {
    assert.deepEqual(back.calls.map((c) => ({ name: c.name, arguments: c.arguments })), calls);
  }
  assert.equal(stripToolCallBlocks(THINK + text), THINK.trimEnd());
});

Deno.test("toChatToolCalls() and toolCallErrorContent() produce OpenAI calls and error_tool_call bodies", () => {
  assert.deepEqual(toChatToolCalls([{ id: "c", name: "f", arguments: { a: 1 } }]), [
    { id: "c", type: "function", function: { name: "f", arguments: '{"a":1}' } },
  ]);
  const body = toolCallErrorContent("Bad call é");
  assert.equal(body, '{"error_tool_call": "Bad call \\u00e9"}');
  assert.ok(isErrorToolContent(body));
  assert.ok(!isErrorToolContent('{"ok": true}'));
});
