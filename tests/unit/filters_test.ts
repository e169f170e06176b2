import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  checkRecord,
  createFilterContext,
  enabledCriteria,
  FILTER_CRITERIA,
  type FilterCriterion,
  filterRecords,
} from "../../core/filters.ts";
import { importFiles } from "../../core/importers/mod.ts";
import { inspectDataset } from "../../core/inspect.ts";
import { type ToolCall, type TrajectoryRecord, TrajectoryRecordSchema } from "../../core/records.ts";

const BENCH = fileURLToPath(new URL("../../../shared/benchdata", import.meta.url));
const SAMPLE = fileURLToPath(new URL("../../data/sample/tooltalk_sample.jsonl", import.meta.url));
const read = (p: string) => Deno.readTextFile(p);

const TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, days: { type: "integer" } },
      required: ["city"],
    },
  },
}];

const call = (args: string, name = "get_weather"): ToolCall => ({
  id: "c1",
  type: "function",
  function: { name, arguments: args },
});

/** A record that passes every criterion: two turns, think tags, JSON tool output. */
function good(): TrajectoryRecord {
  return TrajectoryRecordSchema.parse({
    uuid: "good",
    tools: TOOLS,
    messages: [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", content: "<think>look</think>", tool_calls: [call('{"city":"Paris"}')] },
      { role: "tool", content: '{"temp":21}', tool_call_id: "c1" },
      { role: "assistant", content: "<think>tell</think>21 C." },
      { role: "user", content: "Thanks" },
      { role: "assistant", content: "<think>close</think>Bye." },
    ],
  });
}

function failures(record: TrajectoryRecord, options = {}): [FilterCriterion, string, string, unknown][] {
  return checkRecord(record, createFilterContext(options)).map((
    r,
  ) => [r.criterion, r.path, r.message, r.value]);
}

function withArgs(args: string, name?: string): TrajectoryRecord {
  const r = good();
  r.messages[1]!.tool_calls = [call(args, name)];
  return r;
}

Deno.test("a clean record passes all seven criteria", () => {
  assert.deepEqual(FILTER_CRITERIA.length, 7);
  assert.deepEqual(failures(good()), []);
});

Deno.test("message_order fails on broken role order but leaves argument decoding to its own criterion", () => {
  const r = good();
  r.messages.splice(2, 1);
  assert.deepEqual(failures(r), [[
    "message_order",
    "messages[2].role",
    "Tool call 0 (get_weather) of messages[1] has no tool response",
    "assistant",
  ]]);
  assert.deepEqual(failures(withArgs("{bad")).map((f) => f[0]), ["tool_call_arguments_json"]);
});

Deno.test("think_tags requires exactly one <think> and one </think> in every assistant content", () => {
  const r = good();
  r.messages[3]!.content = "21 C.";
  assert.deepEqual(failures(r), [[
    "think_tags",
    "messages[3].content",
    "Assistant content has 0 <think> tags, expected 1",
    "21 C.",
  ]]);
  r.messages[3]!.content = "<think>a</think><think>b</think>";
  assert.equal(failures(r)[0]![2], "Assistant content has 2 <think> tags, expected 1");
  r.messages[3]!.content = "</think>x<think>";
  assert.equal(failures(r)[0]![2], "Assistant content closes </think> before <think>");
  assert.deepEqual(failures(r, { disabled: ["think_tags"] }), []);
});

Deno.test("tool_response_json_valid rejects empty and non-JSON tool output", () => {
  const r = good();
  r.messages[2]!.content = "Transfer successful";
  assert.deepEqual(failures(r), [[
    "tool_response_json_valid",
    "messages[2].content",
    "Tool response is not valid JSON",
    "Transfer successful",
  ]]);
  r.messages[2]!.content = " ";
  assert.equal(failures(r)[0]![2], "Tool response is empty");
});

Deno.test("duplicate_tools_by_name rejects two tools with one name", () => {
  const r = good();
  r.tools.push(structuredClone(r.tools[0]!));
  assert.deepEqual(failures(r), [[
    "duplicate_tools_by_name",
    "tools[1].function.name",
    "Tool name is not unique in the record",
    "get_weather",
  ]]);
});

Deno.test("tool_schema checks known tool, required, unexpected and typed arguments", () => {
  const base = "messages[1].tool_calls[0].function";
  assert.deepEqual(failures(withArgs('{"city":"Paris"}', "get_time")), [[
    "tool_schema",
    `${base}.name`,
    "Tool call names a tool the record does not offer",
    "get_time",
  ]]);
  assert.deepEqual(failures(withArgs('{"days":2}')), [[
    "tool_schema",
    `${base}.arguments`,
    "Required argument city of get_weather is missing",
    "city",
  ]]);
  assert.deepEqual(failures(withArgs('{"city":"Paris","units":"C"}')), [[
    "tool_schema",
    `${base}.arguments`,
    "Argument units is not a parameter of get_weather",
    "units",
  ]]);
  assert.deepEqual(failures(withArgs('{"city":"Paris","days":"two"}')), [[
    "tool_schema",
    `${base}.arguments`,
    "Argument days of get_weather must be integer",
    { type: "integer" },
  ]]);
  const py = withArgs('{"city":"Paris","days":2}');
  py.tools[0]!.function.parameters = {
    type: "dict",
    properties: { city: { type: "str" }, days: { type: "int" } },
  };
  assert.deepEqual(failures(py), [], "Python-style type names are read as JSON Schema types");
  const open = withArgs('{"city":"Paris","units":"C"}');
  open.tools[0]!.function.parameters.additionalProperties = true;
  assert.deepEqual(failures(open), [], "a schema that allows extra arguments keeps allowing them");
});

Deno.test("tool_call_arguments_json requires arguments that decode to an object", () => {
  assert.deepEqual(failures(withArgs("{city")), [[
    "tool_call_arguments_json",
    "messages[1].tool_calls[0].function.arguments",
    "Tool call arguments are not valid JSON",
    "{city",
  ]]);
  assert.equal(failures(withArgs('"Paris"'))[0]![2], "Tool call arguments must decode to a JSON object");
});

Deno.test("multi_turn_multi_step takes thresholds and an any/all mode", () => {
  const single = good();
  single.messages.splice(4);
  assert.deepEqual(failures(single), [], "one turn with two steps is multi-step");
  assert.deepEqual(failures(single, { multiMode: "all" }), [[
    "multi_turn_multi_step",
    "messages",
    "Record has 1 user turns and at most 2 assistant steps in a turn, expected 2 turns and 2 steps",
    { turns: 1, steps: 2 },
  ]]);
  assert.equal(failures(good(), { minUserTurns: 3, minAssistantSteps: 3 })[0]![0], "multi_turn_multi_step");
  assert.deepEqual(failures(good(), { minUserTurns: 3, minAssistantSteps: 2 }), []);
});

Deno.test("criteria are enabled and disabled by name, unknown names are refused", () => {
  assert.deepEqual(enabledCriteria({ criteria: ["tool_schema", "think_tags"] }), [
    "think_tags",
    "tool_schema",
  ]);
  assert.deepEqual(enabledCriteria({ disabled: ["think_tags"] }).length, 6);
  assert.throws(
    () => enabledCriteria({ disabled: ["thinking" as FilterCriterion] }),
    /Unknown filter criterion thinking/,
  );
});

Deno.test("filterRecords() keeps clean records and counts every failed criterion", () => {
  const noThink = good();
  noThink.uuid = "no-think";
  noThink.messages[3]!.content = "21 C.";
  noThink.messages[2]!.content = "";
  const r = filterRecords([good(), noThink]);
  assert.deepEqual(r.kept.map((x) => x.uuid), ["good"]);
  assert.deepEqual(r.rejected.map((x) => [x.uuid, x.reasons.map((y) => y.criterion)]), [
    ["no-think", ["think_tags", "tool_response_json_valid"]],
  ]);
  assert.deepEqual(r.counts, {
    message_order: 0,
    think_tags: 1,
    tool_response_json_valid: 1,
    duplicate_tools_by_name: 0,
    tool_schema: 0,
    tool_call_arguments_json: 0,
    multi_turn_multi_step: 0,
  });
});

Deno.test("filters on all ToolTalk conversations: only think_tags rejects (ToolTalk has no thinking)", async () => {
  const paths = ["easy", "tooltalk"].flatMap((d) =>
    [...Deno.readDirSync(`${BENCH}/tooltalk/data/${d}`)].map((e) => `${BENCH}/tooltalk/data/${d}/${e.name}`)
  );
  const { records } = await importFiles(paths, read);
  const all = filterRecords(records);
  assert.equal(all.total, 77);
  assert.deepEqual(all.counts, {
    message_order: 0,
    think_tags: 77,
    tool_response_json_valid: 0,
    duplicate_tools_by_name: 0,
    tool_schema: 0,
    tool_call_arguments_json: 0,
    multi_turn_multi_step: 0,
  });
  assert.equal(filterRecords(records, { disabled: ["think_tags"] }).kept.length, 77);
  assert.equal(
    filterRecords(records, { disabled: ["think_tags"], multiMode: "all" }).counts.multi_turn_multi_step,
    16,
  );
});

Deno.test("filters on the tau-bench airline trajectories count plain-string tool output", async () => {
  const { records } = await importFiles(
    [`${BENCH}/tau-bench/historical_trajectories/gpt-4o-airline.json`],
    read,
    { validation: { allowEmptyToolResponses: true } },
  );
  const all = filterRecords(records);
  assert.deepEqual(all.counts, {
    message_order: 0,
    think_tags: 200,
    tool_response_json_valid: 116,
    duplicate_tools_by_name: 0,
    tool_schema: 0,
    tool_call_arguments_json: 0,
    multi_turn_multi_step: 0,
  });
  const noThink = filterRecords(records, { disabled: ["think_tags"] });
  assert.equal(noThink.kept.length, 84);
  assert.equal(
    filterRecords(records, { disabled: ["think_tags"], multiMode: "all" }).counts.multi_turn_multi_step,
    24,
  );
});

Deno.test("inspectDataset() summarises turns, tools and checklist coverage of the sample", async () => {
  const { records } = await importFiles([SAMPLE], read);
  const s = inspectDataset(records);
  assert.equal(s.records, 10);
  assert.deepEqual(s.userTurns, { mean: 3.9, min: 2, max: 8 });
  assert.equal(s.toolCalls.total, 48);
  assert.equal(s.withSystemMessage, 10);
  assert.equal(s.checklists.recordsWithVariant, 10);
  assert.equal(s.checklists.focusMix["assistant.tool_calls"], 48);
  assert.equal(s.checklists.focusMix["assistant.content.thinking"], 0);
  assert.ok(s.checklists.requiredShare > 0 && s.checklists.requiredShare < 1);
  assert.ok(s.checklists.maxDependencyDepth >= 1);
  assert.equal(s.checklists.itemsWithChecks, 71, "the rule checks calls and their results, not replies");
  const empty = inspectDataset([]);
  assert.deepEqual([empty.records, empty.userTurns.mean, empty.checklists.requiredShare], [0, 0, 0]);
});
