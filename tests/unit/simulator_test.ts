import assert from "node:assert/strict";
import type { ChatResult } from "../../core/llm_types.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import {
  buildToolIndex,
  cacheKey,
  cachePut,
  emptyCache,
  extractJsonObject,
  parseSimulation,
  type PendingCall,
  resolveToolCall,
  SIMULATION_SCHEMA,
  simulationPrompt,
  validateArguments,
} from "../../core/simulator.ts";

/** A small synthetic two-turn record (no third-party data). */
function record(): TrajectoryRecord {
  return {
    uuid: "rec-1",
    tools: [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather now",
          parameters: {
            type: "object",
            properties: { city: { type: "string" }, unit: { type: "string", enum: ["c", "f"] } },
            required: ["city"],
          },
        },
      },
      {
        type: "function",
        function: {
          name: "book_table",
          description: "Book a table",
          parameters: {
            type: "object",
            properties: {
              restaurant: { type: "string" },
              people: { type: "integer" },
              time: { type: ["string", "null"] },
              extra: { type: "mystery" },
            },
            required: ["restaurant", "people"],
          },
        },
      },
    ],
    messages: [
      { role: "user", content: "Weather in Paris?", tool_calls: [] },
      {
        role: "assistant",
        content: "<think>\nlook\n</think>",
        tool_calls: [{
          id: "a",
          type: "function",
          function: { name: "get_weather", arguments: '{"city":"Paris"}' },
        }],
      },
      { role: "tool", content: '{"temp": 21, "note": "\ud800x"}', tool_calls: [] },
      { role: "assistant", content: "<think>\nok\n</think>\n\n21 degrees.", tool_calls: [] },
      { role: "user", content: "Book Chez Nous for 2.", tool_calls: [] },
      {
        role: "assistant",
        content: "<think>\nbook\n</think>",
        tool_calls: [{
          id: "b",
          type: "function",
          function: { name: "book_table", arguments: '{"restaurant":"Chez Nous","people":2}' },
        }],
      },
      { role: "tool", content: '{"booking_id": "B-17"}', tool_calls: [] },
      { role: "assistant", content: "Booked.", tool_calls: [] },
    ],
    checklists: [],
  };
}

function call(name: string, args: Record<string, unknown>, turn = 0): PendingCall {
  return { index: 0, id: "c0", name, arguments: args, turn };
}

Deno.test("buildToolIndex() pairs every recorded call with its tool message and turn", () => {
  const index = buildToolIndex(record());
  assert.deepEqual(index.recorded.map((r) => [r.tool, r.canonicalArgs, r.turn]), [
    ["get_weather", '{"city":"Paris"}', 0],
    ["book_table", '{"people":2,"restaurant":"Chez Nous"}', 1],
  ]);
  assert.deepEqual(Object.keys(index.tools), ["get_weather", "book_table"]);
  const broken = record();
  broken.messages.splice(2, 1);
  assert.throws(() => buildToolIndex(broken), /has no tool message after it/);
});

Deno.test("resolveToolCall() replays an exact match whatever the key order, 2.0 matching 2", () => {
  const index = buildToolIndex(record());
  const r = resolveToolCall(
    index,
    call("book_table", JSON.parse('{"people": 2.0, "restaurant": "Chez Nous"}')),
    emptyCache(),
  );
  assert.deepEqual(r, { kind: "replay", content: '{"booking_id": "B-17"}' });
  // lone surrogates of the recorded output are stripped
  assert.deepEqual(resolveToolCall(index, call("get_weather", { city: "Paris" }), emptyCache()), {
    kind: "replay",
    content: '{"temp": 21, "note": "x"}',
  });
});

Deno.test("resolveToolCall() replays future-turn calls only with replayScope all-turns", () => {
  const args = { restaurant: "Chez Nous", people: 2 };
  assert.equal(
    resolveToolCall(buildToolIndex(record()), call("book_table", args, 0), emptyCache()).kind,
    "replay",
  );
  const scoped = buildToolIndex(record(), { replayScope: "up-to-current-turn" });
  assert.equal(resolveToolCall(scoped, call("book_table", args, 0), emptyCache()).kind, "simulate");
  assert.equal(resolveToolCall(scoped, call("book_table", args, 1), emptyCache()).kind, "replay");
});

Deno.test("resolveToolCall() answers an unknown tool with an error_tool_call", () => {
  const r = resolveToolCall(buildToolIndex(record()), call("launch_rocket", {}), emptyCache());
  assert.equal(r.kind, "error");
  if (r.kind !== "error") return;
  assert.equal(r.code, "unknown-tool");
  assert.match(r.content, /^\{"error_tool_call": "There is no tool named 'launch_rocket'/);
});

Deno.test("resolveToolCall() reports schema violations with SCHEMA_VALIDATION_FAILED", () => {
  const r = resolveToolCall(
    buildToolIndex(record()),
    call("get_weather", { unit: "k", zone: 1 }),
    emptyCache(),
  );
  assert.equal(r.kind, "error");
  if (r.kind !== "error") return;
  assert.equal(r.code, "schema");
  const body = JSON.parse(r.content);
  assert.equal(body.error_tool_call.code, "SCHEMA_VALIDATION_FAILED");
  assert.equal(body.error_tool_call.details.tool, "get_weather");
  assert.equal(body.error_tool_call.details.original_index, "rec-1");
  assert.deepEqual(body.error_tool_call.details.errors, [
    "Missing required argument 'city'",
    `Argument 'unit' must be one of ["c", "f"], got "k"`,
    "Unexpected argument 'zone'",
  ]);
});

Deno.test("validateArguments() applies the shallow reference rules", () => {
  const params = record().tools[1]!.function.parameters;
  assert.deepEqual(validateArguments(params, { restaurant: "X", people: 2.0 }, true), []);
  assert.deepEqual(validateArguments(params, { restaurant: "X", people: 2.5 }, true), [
    "Argument 'people' should be of type integer, got number",
  ]);
  assert.deepEqual(validateArguments(params, { restaurant: 1, people: true }, true), [
    "Argument 'restaurant' should be of type string, got integer",
    "Argument 'people' should be of type integer, got boolean",
  ]);
  // a type list passes when any member matches; unknown type names pass
  assert.deepEqual(
    validateArguments(params, { restaurant: "X", people: 1, time: null, extra: [1] }, true),
    [],
  );
  assert.deepEqual(validateArguments(params, { restaurant: "X", people: 1, time: 5 }, true), [
    "Argument 'time' should be of type string | null, got integer",
  ]);
  // strict off: unexpected arguments pass
  assert.deepEqual(validateArguments(params, { restaurant: "X", people: 1, vip: true }, false), []);
  const other = {
    type: "object",
    properties: { o: { type: "object" }, a: { type: "array" }, n: { type: "number" } },
  };
  assert.deepEqual(validateArguments(other, { o: [], a: {}, n: "1" }, true).length, 3);
});

Deno.test("resolveToolCall() honours a tool's own strict:false and the strict option", () => {
  const rec = record();
  rec.tools[0]!.function.strict = false;
  const args = { city: "Rome", mood: "sunny" };
  assert.equal(
    resolveToolCall(buildToolIndex(rec), call("get_weather", args), emptyCache()).kind,
    "simulate",
  );
  assert.equal(
    resolveToolCall(buildToolIndex(rec, { strict: true }), call("get_weather", args), emptyCache()).kind,
    "error",
  );
});

Deno.test("resolveToolCall() asks for a simulation with recorded I/O as examples and the JSON schema", () => {
  const index = buildToolIndex(record(), { sampling: { temperature: 0.6 } });
  const r = resolveToolCall(index, call("get_weather", { city: "Rome", unit: "c" }), emptyCache());
  assert.equal(r.kind, "simulate");
  if (r.kind !== "simulate") return;
  assert.deepEqual(r.request.jsonSchema, { name: "tool_execution_response", schema: SIMULATION_SCHEMA });
  assert.deepEqual(r.request.sampling, { temperature: 0.6 });
  assert.equal(r.request.messages[0]!.role, "system");
  const user = r.request.messages[1]!.content;
  assert.ok(
    user.startsWith(
      "Earlier calls in this conversation and their real results (examples):\n" +
        'Tool name:\nget_weather\nTool arguments:\n{\n"city": "Paris"\n}\nTool execution result:\n' +
        '{"temp": 21, "note": "\ud800x"}\n\nTool name:\nbook_table\n',
    ),
  );
  assert.ok(
    user.includes('Tool to run now: get_weather\nIts input schema (JSON Schema):\n{\n"type": "function",'),
  );
  assert.ok(
    user.endsWith(
      'Arguments of this call (JSON):\n{\n"city": "Rome",\n"unit": "c"\n}\nReturn the tool\'s execution result as JSON.',
    ),
  );
  const scoped = buildToolIndex(record(), { replayScope: "up-to-current-turn" });
  assert.ok(
    !simulationPrompt(scoped, call("get_weather", { city: "Rome" }, 0)).includes(
      "book_table\nTool arguments",
    ),
  );
});

Deno.test("resolveToolCall() serves a simulated output from the consistency cache", () => {
  const index = buildToolIndex(record());
  const c = call("get_weather", { unit: "c", city: "Rome" });
  const empty = emptyCache();
  const cache = cachePut(empty, c, '{"temp": 30}');
  assert.deepEqual(empty.entries, {}, "cachePut() does not change its input");
  assert.deepEqual(Object.keys(cache.entries), [cacheKey("get_weather", { city: "Rome", unit: "c" })]);
  assert.deepEqual(resolveToolCall(index, { ...c, arguments: { city: "Rome", unit: "c" } }, cache), {
    kind: "cached",
    content: '{"temp": 30}',
  });
  assert.equal(resolveToolCall(buildToolIndex(record(), { cache: false }), c, cache).kind, "simulate");
  assert.ok(JSON.parse(JSON.stringify(cache)), "the cache is plain JSON");
});

function result(content: string, finishReason: ChatResult["finishReason"] = "stop") {
  return { content, finishReason };
}

Deno.test("parseSimulation() returns execution_result re-serialised like json.dumps", () => {
  assert.deepEqual(parseSimulation(result('{"analysis": "x", "execution_result": {"t": "é", "n": [1]}}')), {
    ok: true,
    content: '{"t": "\\u00e9", "n": [1]}',
  });
  assert.deepEqual(parseSimulation(result('```json\n{"analysis": "", "execution_result": []}\n```')), {
    ok: true,
    content: "[]",
  });
});

Deno.test("parseSimulation() fails on non-JSON, empty objects and scalars, never inventing output", () => {
  assert.equal(parseSimulation(result("sure, here you go")).ok, false);
  assert.equal(parseSimulation(result('{"analysis": "x", "execution_result": {}}')).ok, false);
  assert.equal(parseSimulation(result('{"analysis": "x", "execution_result": "done"}')).ok, false);
  const cut = parseSimulation(result('{"analysis": "x", "execution_re', "length"));
  assert.equal(cut.ok, false);
  if (!cut.ok) assert.match(cut.error, /token limit/);
});

Deno.test("extractJsonObject() finds the object after a think block or inside prose", () => {
  assert.deepEqual(extractJsonObject('<think>{"no": 1}</think> {"yes": 2}'), { yes: 2 });
  assert.deepEqual(extractJsonObject('Result: {"a": {"b": 1}} done'), { a: { b: 1 } });
  assert.equal(extractJsonObject("[1, 2]"), undefined);
});
