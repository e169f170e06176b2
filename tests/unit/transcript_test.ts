import assert from "node:assert/strict";
import type { ChatMessage } from "../../core/llm_types.ts";
import { assistantFields, judgeContext, renderTranscript } from "../../core/transcript.ts";

const call = (name: string, args: string, id = "c1") => ({
  id,
  type: "function" as const,
  function: { name, arguments: args },
});

const dialogue: ChatMessage[] = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "Weather in Paris?" },
  {
    role: "assistant",
    content: "<think>\nNeed data.\n</think>",
    tool_calls: [call("get_weather", '{"city":"Paris"}')],
  },
  { role: "tool", content: '{"temp": 21}', tool_call_id: "c1" },
  { role: "assistant", content: "<think>\nDone.\n</think>\n\nIt is 21 degrees." },
  { role: "user", content: "And Rome?" },
  {
    role: "assistant",
    content:
      '<think>\nAgain.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
    tool_calls: [call("get_weather", '{"city":"Rome"}', "c2")],
  },
  { role: "tool", content: '{"temp": 25}', tool_call_id: "c2" },
  { role: "assistant", content: "<think>\nok\n</think>\n\n25 degrees." },
];

Deno.test("renderTranscript() renders a whole dialogue in the reference layout (golden)", () => {
  assert.equal(
    renderTranscript(dialogue),
    "Role: system\ncontent: Be brief.\n" +
      "# Turn: 0\nRole: user\ncontent: Weather in Paris?\n" +
      "## Step: 0\nRole: assistant\ncontent.thinking: \nNeed data.\n\ncontent.user_visible_reply: None\n" +
      'tool_call: <|tool_call_start|>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n<|tool_call_end|>\n' +
      'Role: tool\ncontent: {"temp": 21}\n' +
      "## Step: 1\nRole: assistant\ncontent.thinking: \nDone.\n\ncontent.user_visible_reply: It is 21 degrees.\n" +
      "tool_call: None\n" +
      "# Turn: 1\nRole: user\ncontent: And Rome?\n" +
      "## Step: 0\nRole: assistant\ncontent.thinking: \nAgain.\n\ncontent.user_visible_reply: None\n" +
      'tool_call: <|tool_call_start|>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n<|tool_call_end|>\n' +
      'Role: tool\ncontent: {"temp": 25}\n' +
      "## Step: 1\nRole: assistant\ncontent.thinking: \nok\n\ncontent.user_visible_reply: 25 degrees.\ntool_call: None\n",
  );
});

Deno.test("assistantFields() puts a call written without thinking inside the thinking, tool_call None", () => {
  const content = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>';
  assert.deepEqual(assistantFields({ role: "assistant", content, tool_calls: [call("f", "{}")] }), {
    thinking: content,
    reply: "None",
    toolCall: "None",
  });
});

Deno.test("assistantFields() keeps preface text before API calls in the tool_call field", () => {
  const f = assistantFields({
    role: "assistant",
    content: "<think>x</think>Let me check. ",
    tool_calls: [call("f", '{"q":"é"}'), call("g", "not json", "c2")],
  });
  assert.deepEqual(f, {
    thinking: "x",
    reply: "None",
    toolCall:
      'Let me check.\n<|tool_call_start|>\n{"name": "f", "arguments": {"q": "é"}}\n<|tool_call_end|>\n' +
      '<|tool_call_start|>\n{"name": "g", "arguments": "not json"}\n<|tool_call_end|>',
  });
});

Deno.test("assistantFields() writes None for an empty reply and a missing think block", () => {
  assert.deepEqual(assistantFields({ role: "assistant", content: "<think>a</think>  " }), {
    thinking: "a",
    reply: "None",
    toolCall: "None",
  });
  assert.deepEqual(assistantFields({ role: "assistant", content: "Just text" }), {
    thinking: "Just text",
    reply: "None",
    toolCall: "None",
  });
  // Python's split()[1]: the reply stops at a repeated "thinking</think>"
  assert.equal(
    assistantFields({ role: "assistant", content: "<think>a</think>b<think>a</think>c" }).reply,
    "b<think>",
  );
});

Deno.test("judgeContext() gives previous turns and the current turn up to the step and its tool results", () => {
  const first = judgeContext(dialogue, 1, 2);
  assert.equal(first.previous, "Role: system\ncontent: Be brief.\n");
  assert.ok(first.current.startsWith("# Turn: 0\nRole: user\ncontent: Weather in Paris?\n## Step: 0\n"));
  assert.ok(first.current.endsWith('Role: tool\ncontent: {"temp": 21}\n'));
  assert.ok(!first.current.includes("Step: 1"));

  const later = judgeContext(dialogue, 5, 6);
  assert.equal(later.previous, renderTranscript(dialogue.slice(0, 5)));
  assert.ok(
    later.current.startsWith("# Turn: 0\nRole: user\ncontent: And Rome?\n"),
    "the current turn is always Turn 0",
  );
  assert.ok(later.current.endsWith('Role: tool\ncontent: {"temp": 25}\n'));

  assert.equal(judgeContext(dialogue.slice(1), 0, 1).previous, "", "turn 0 without a system message");
  assert.throws(() => judgeContext(dialogue, 2, 4), /not a user message/);
  assert.throws(() => judgeContext(dialogue, 1, 3), /not an assistant step/);
});
