import assert from "node:assert/strict";
import {
  BadRequestError,
  boundStrings,
  completionBudget,
  OPENAI_SAMPLING_DEFAULTS,
  parseRequest,
  parseToolCalls,
  prepareRequest,
  toChatCompletion,
} from "./openai_map.ts";

const defaults = OPENAI_SAMPLING_DEFAULTS;

function throwsBad(fn: () => unknown, _cls: typeof BadRequestError, includes?: string): BadRequestError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof BadRequestError, `expected a BadRequestError, got ${e}`);
    if (includes) assert.ok(e.message.includes(includes), `${e.message} does not mention ${includes}`);
    return e;
  }
  throw new assert.AssertionError({ message: "expected a BadRequestError" });
}
const tools = [{
  type: "function",
  function: { name: "get_weather", description: "Weather", parameters: { type: "object" } },
}];
let n = 0;
const newId = () => `call_${++n}`;

Deno.test("parseRequest() names the first bad field", () => {
  const e = throwsBad(
    () => parseRequest({ messages: [{ role: "user", content: "hi" }], temperature: 3 }),
    BadRequestError,
  );
  assert.deepEqual(e.param, "temperature");
  throwsBad(() => parseRequest({ messages: [] }), BadRequestError, "messages");
  throwsBad(() => parseRequest({ messages: [{ role: "user", content: "x" }], n: 2 }), BadRequestError, "n");
  throwsBad(
    () => parseRequest({ messages: [{ role: "user", content: "x" }], stream: true }),
    BadRequestError,
  );
});

Deno.test("prepareRequest() maps sampling, JSON schema and OpenAI defaults", () => {
  const schema = { type: "object", properties: { answer: { type: "boolean" } }, required: ["answer"] };
  const p = prepareRequest(
    parseRequest({
      model: "m",
      messages: [{
        role: "developer",
        content: [{ type: "text", text: "Be " }, { type: "text", text: "brief" }],
      }, {
        role: "user",
        content: "hi",
      }],
      temperature: 0,
      max_tokens: 50,
      seed: -1,
      stop: "END",
      response_format: { type: "json_schema", json_schema: { name: "v", schema, strict: true } },
      logprobs: true,
      return_token_ids: true,
    }),
    { nativeTools: false, defaults },
  );
  assert.deepEqual(p.options.messages, [{ role: "system", content: "Be brief" }, {
    role: "user",
    content: "hi",
  }]);
  assert.deepEqual(p.options.temperature, 0);
  assert.deepEqual([p.options.top_p, p.options.top_k, p.options.min_p], [1, 1, 0]); // greedy
  assert.deepEqual(p.options.response_format, { type: "json_schema", json_schema: { schema } });
  assert.deepEqual(p.options.stop, ["END"]);
  assert.ok(p.options.seed !== undefined && p.options.seed >= 0 && p.options.seed < 0xffffffff);
  assert.deepEqual(p.maxTokens, 50);
  assert.deepEqual(p.toolMode, "none");
  const o = prepareRequest(
    parseRequest({ messages: [{ role: "user", content: "x" }], response_format: { type: "json_object" } }),
    {
      nativeTools: false,
      defaults,
    },
  );
  assert.deepEqual(o.options.response_format, {
    type: "json_schema",
    json_schema: { schema: { type: "object" } },
  });
});

Deno.test("prepareRequest() injects tools into the system message when the template cannot render them", () => {
  const p = prepareRequest(
    parseRequest({
      messages: [
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: null,
          tool_calls: [{
            id: "c1",
            type: "function",
            function: { name: "get_weather", arguments: '{"city":"Paris"}' },
          }],
        },
        { role: "tool", tool_call_id: "c1", content: '{"temp":21}' },
      ],
      tools,
    }),
    { nativeTools: false, defaults },
  );
  assert.deepEqual(p.toolMode, "injected");
  assert.deepEqual(p.options.tools, undefined);
  const [sys, , asst, tool] = p.options.messages;
  assert.deepEqual(sys!.role, "system");
  assert.ok(sys!.content.includes("<tools>") && sys!.content.includes('"name":"get_weather"'));
  assert.deepEqual(
    asst!.content,
    '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>',
  );
  assert.deepEqual(asst!.tool_calls, undefined);
  assert.deepEqual(tool, { role: "tool", content: '{"temp":21}', tool_call_id: "c1" });

  const native = prepareRequest(parseRequest({ messages: [{ role: "user", content: "x" }], tools }), {
    nativeTools: true,
    defaults,
  });
  assert.deepEqual([native.toolMode, native.options.tool_choice], ["native", "auto"]);
  const none = prepareRequest(
    parseRequest({ messages: [{ role: "user", content: "x" }], tools, tool_choice: "none" }),
    {
      nativeTools: false,
      defaults,
    },
  );
  assert.deepEqual([none.toolMode, none.options.messages.length], ["none", 1]);
});

Deno.test("completionBudget() caps the completion to the slot's context and rejects prompts that fill it", () => {
  assert.deepEqual(completionBudget(100, undefined, 1024), 924);
  assert.deepEqual(completionBudget(100, 64, 1024), 64);
  assert.deepEqual(completionBudget(1000, 64, 1024), 24);
  throwsBad(() => completionBudget(1024, 64, 1024), BadRequestError, "Prompt has 1024 tokens");
});

Deno.test("parseToolCalls() turns <tool_call> blocks into calls and keeps invalid blocks as content", () => {
  const r = parseToolCalls(
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    newId,
  );
  assert.deepEqual(r.content, "Sure.");
  assert.deepEqual(r.toolCalls.length, 1);
  assert.deepEqual(r.toolCalls[0]!.function, { name: "get_weather", arguments: '{"city":"Paris"}' });
  for (const text of ["plain", "<tool_call>{bad}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>']) {
    assert.deepEqual(parseToolCalls(text, newId), { content: text, toolCalls: [] });
  }
  assert.deepEqual(
    parseToolCalls('<tool_call>{"name": "f", "arguments": "{}"}', newId).toolCalls[0]!.function,
    {
      name: "f",
      arguments: "{}",
    },
  );
});

Deno.test("toChatCompletion() shapes an OpenAI response with usage and finish reasons", () => {
  const ctx = {
    id: "chatcmpl-1",
    model: "m",
    created: 1,
    promptTokens: 10,
    toolMode: "none" as const,
    newCallId: newId,
  };
  const r = toChatCompletion({ text: "hi", content: "hi", tokens_predicted: 3, stopped_limited: false }, ctx);
  assert.deepEqual(r.choices, [{
    index: 0,
    message: { role: "assistant", content: "hi" },
    logprobs: null,
    finish_reason: "stop",
  }]);
  assert.deepEqual(r.usage, { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 });
  assert.deepEqual(r.system_fingerprint, null);
  const cut = toChatCompletion({ text: "h", tokens_predicted: 5, stopped_limit: true }, {
    ...ctx,
    systemFingerprint: "7",
  });
  assert.deepEqual((cut.choices as { finish_reason: string }[])[0]!.finish_reason, "length");
  assert.deepEqual(cut.system_fingerprint, "7");
  const call = toChatCompletion(
    { text: '<tool_call>{"name": "f", "arguments": {}}</tool_call>', tokens_predicted: 9 },
    { ...ctx, toolMode: "injected" },
  );
  const choice = (call.choices as { finish_reason: string; message: Record<string, unknown> }[])[0]!;
  assert.deepEqual(choice.finish_reason, "tool_calls");
  assert.deepEqual(choice.message.content, null);
  assert.deepEqual((choice.message.tool_calls as { function: unknown }[])[0]!.function, {
    name: "f",
    arguments: "{}",
  });
  const native = toChatCompletion(
    {
      text: "",
      content: "",
      tool_calls: [{ function: { name: "g", arguments: "{}" } }],
      tokens_predicted: 4,
    },
    { ...ctx, toolMode: "native" },
  );
  assert.deepEqual((native.choices as { finish_reason: string }[])[0]!.finish_reason, "tool_calls");
});

Deno.test("boundStrings() adds maxLength to unbounded string schemas only", () => {
  const schema = {
    type: "object",
    properties: {
      a: { type: "string" },
      b: { type: "string", maxLength: 5 },
      c: { type: "string", enum: ["x", "y"] },
      d: { type: "array", items: { type: ["string", "null"] } },
      e: { type: "boolean", default: "string" },
      default: { type: "string" },
    },
  };
  assert.deepEqual(boundStrings(schema, 100), {
    type: "object",
    properties: {
      a: { type: "string", maxLength: 100 },
      b: { type: "string", maxLength: 5 },
      c: { type: "string", enum: ["x", "y"] },
      d: { type: "array", items: { type: ["string", "null"], maxLength: 100 } },
      e: { type: "boolean", default: "string" },
      default: { type: "string", maxLength: 100 },
    },
  });
});
