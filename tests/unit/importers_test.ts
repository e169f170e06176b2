import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  cm2RecordFromRaw,
  detectFormat,
  formatImportError,
  importCm2Json,
  type ImportError,
  importFiles,
  importOpenAIChatJsonl,
  importToolTalk,
  parseToolTalkCatalog,
  ruleWeights,
  stableId,
} from "../../core/importers/mod.ts";
import { validateRecord } from "../../core/records.ts";
import { buildSample } from "../../scripts/make_sample.ts";
import { buildLearningData } from "../../scripts/make_learning_data.ts";
import { ROOT } from "../../scripts/paths.ts";

const BENCH = fileURLToPath(new URL("../../../shared/benchdata", import.meta.url));
const FIXTURES = fileURLToPath(new URL("../fixtures/corrupt", import.meta.url));
const SAMPLE = fileURLToPath(new URL("../../data/sample/tooltalk_sample.jsonl", import.meta.url));
const read = (p: string) => Deno.readTextFile(p);

function toolTalkPaths(): string[] {
  return ["easy", "tooltalk"].flatMap((dir) =>
    [...Deno.readDirSync(`${BENCH}/tooltalk/data/${dir}`)]
      .map((e) => e.name)
      .filter((n) => n.endsWith(".json"))
      .sort()
      .map((n) => `${BENCH}/tooltalk/data/${dir}/${n}`)
  );
}

/** The error without the absolute file path, for exact comparison. */
function shortError(e: ImportError): Omit<ImportError, "file"> & { file: string } {
  return { ...e, file: e.file.split("/").pop()! };
}

Deno.test("importFiles() imports all 78 ToolTalk conversations: 77 records and one exact error", async () => {
  const paths = toolTalkPaths();
  assert.equal(paths.length, 78);
  const report = await importFiles(paths, read);
  assert.equal(report.records.length, 77);
  // Upstream defect: this conversation's first "user" turn is the scenario text, so two user turns
  // follow each other (messages[0] is our system message).
  assert.deepEqual(report.errors.map(shortError), [{
    file: "AccountTools-Calendar-Weather-RegisterUser-0.json",
    record: { index: 0, id: "tooltalk-AccountTools-Calendar-Weather-RegisterUser-0" },
    path: "messages[2].role",
    message: "A user message must be followed by an assistant message",
    value: "user",
  }]);
  assert.ok(report.files.every((f) => f.format === "tooltalk" && f.imported + f.errored === 1 && !f.failed));
  for (const r of report.records) assert.ok(validateRecord(r).ok, r.uuid);
});

Deno.test("importFiles() imports all 200 tau-bench airline trajectories with zero errors and keeps the reward", async () => {
  const file = `${BENCH}/tau-bench/historical_trajectories/gpt-4o-airline.json`;
  // Its `think` tool answers "" by design: by default those records are rejected, each with the reason.
  const strict = await importFiles([file], read);
  assert.equal(strict.records.length + strict.errors.length, 200);
  assert.ok(strict.errors.length > 0);
  assert.ok(
    strict.errors.every((e) => /Tool response is empty/.test(e.message)),
    strict.errors[0]?.message ?? "",
  );
  const report = await importFiles([file], read, { validation: { allowEmptyToolResponses: true } });
  assert.deepEqual(report.errors, []);
  assert.equal(report.records.length, 200);
  assert.equal(report.files[0]!.format, "tau-bench");
  assert.equal(report.files[0]!.imported, 200);
  const rewards = report.records.map((r) => r.meta?.reward);
  assert.equal(rewards.filter((x) => x === 1).length, 84);
  assert.equal(rewards.filter((x) => x === 0).length, 116);
  const first = report.records[0]!;
  assert.equal(first.uuid, "tau-bench-gpt-4o-airline-task0-trial0");
  assert.equal(first.tools.length, 14);
  assert.equal(first.messages[0]!.role, "system");
  assert.notEqual(first.messages.at(-1)!.role, "user");
  assert.equal(new Set(report.records.map((r) => r.uuid)).size, 200);
});

Deno.test("importToolTalk() maps API calls to call/response pairs, errors to {error}, and adds session_token", async () => {
  const catalog = parseToolTalkCatalog(
    await read(`${BENCH}/tooltalk/derived/tooltalk_openai_tools.derived.json`),
  );
  const file = `${BENCH}/tooltalk/data/tooltalk/AccountTools-Email-Reminder-ChangePassword-1.json`;
  const { records, errors } = importToolTalk(await read(file), { file }, { catalog });
  assert.deepEqual(errors, []);
  const r = records[0]!;
  assert.equal(r.messages[0]!.role, "system");
  assert.match(r.messages[0]!.content, /current time is/);
  const calls = r.messages.flatMap((m) => m.tool_calls);
  assert.deepEqual(calls.map((c) => c.id), calls.map((_, k) => `call_${k}`));
  const failed = r.messages.find((m) => m.role === "tool" && m.content.includes("error"))!;
  assert.deepEqual(JSON.parse(failed.content), { error: "The password is incorrect." });
  r.messages.forEach((m, i) => {
    if (m.role === "assistant" && m.tool_calls.length > 0) {
      assert.equal(m.tool_calls.length, 1);
      assert.equal(r.messages[i + 1]!.tool_call_id, m.tool_calls[0]!.id);
    }
  });
  const change = r.tools.find((t) => t.function.name === "ChangePassword")!;
  assert.ok((change.function.parameters.required as string[]).includes("session_token"));
  assert.equal(r.meta?.source, "tooltalk");

  const easy = `${BENCH}/tooltalk/data/easy/CreateEvent-easy.json`;
  const narrow = importToolTalk(await read(easy), { file: easy }, { catalog, candidateTools: "apis_used" })
    .records[0]!;
  assert.deepEqual(narrow.tools.map((t) => t.function.name), ["CreateEvent"]);
  const props = narrow.tools[0]!.function.parameters.properties as Record<string, Record<string, unknown>>;
  assert.deepEqual(props.event_type!.enum, ["meeting", "event"]);
  assert.equal(props.name!.enum, undefined);
  const raw = importToolTalk(await read(easy), { file: easy }, {
    catalog,
    repairSchemas: false,
    systemMessage: false,
  });
  const rawProps = raw.records[0]!.tools.find((t) => t.function.name === "CreateEvent")!.function.parameters
    .properties as Record<string, Record<string, unknown>>;
  assert.deepEqual(rawProps.name!.enum, ["meeting", "event"]);
  assert.equal(raw.records[0]!.messages[0]!.role, "user");
});

Deno.test("importToolTalk() drops trailing unanswered user messages and records how many", async () => {
  const catalog = parseToolTalkCatalog(
    await read(`${BENCH}/tooltalk/derived/tooltalk_openai_tools.derived.json`),
  );
  const file = `${BENCH}/tooltalk/data/tooltalk/AccountTools-Alarm-Calendar-AddAlarm-0.json`;
  const r = importToolTalk(await read(file), { file }, { catalog }).records[0]!;
  assert.equal(r.meta?.trimmed_trailing_user, 1);
  assert.equal(r.messages.at(-1)!.role, "assistant");
});

Deno.test("a corrupt CM2 JSONL gives exactly one precise error per bad record and imports the rest", async () => {
  const report = await importFiles([`${FIXTURES}/cm2_records.jsonl`], read);
  assert.deepEqual(report.records.map((r) => r.uuid), ["good-1", "good-2-turn-blocks"]);
  assert.deepEqual(report.files.map((f) => [f.format, f.imported, f.errored, f.failed]), [[
    "cm2-jsonl",
    2,
    8,
    false,
  ]]);
  const file = "cm2_records.jsonl";
  assert.deepEqual(report.errors.map(shortError), [
    {
      file,
      record: { index: 2, line: 3, id: "bad-truncated" },
      path: "$",
      message: "Line is not valid JSON: Unexpected end of JSON input",
      value: '{"uuid": "bad-truncated", "tools": [{"name": "get_weather", …',
    },
    {
      file,
      record: { index: 3, line: 4, id: "bad-role-order" },
      path: "messages[1].role",
      message: "A user message must be followed by an assistant message",
      value: "user",
    },
    {
      file,
      record: { index: 4, line: 5, id: "bad-missing-tool-response" },
      path: "messages[2].role",
      message: "Tool call 0 (get_weather) of messages[1] has no tool response",
      value: "assistant",
    },
    {
      file,
      record: { index: 5, line: 6, id: "bad-arguments" },
      path: "messages[1].tool_calls[0].function.arguments",
      message: "Tool call arguments are not valid JSON",
      value: "{city: Paris",
    },
    {
      file,
      record: { index: 6, line: 7, id: "bad-weights" },
      path: "checklists[0][0]",
      message: "Checklist weights of turn 0 sum to 0.8, expected 1",
      value: 0.8,
    },
    {
      file,
      record: { index: 7, line: 8, id: "bad-dependency" },
      path: "checklists[0][0][2].dependence[0]",
      message: "Dependency names no item of turn 0",
      value: "C9",
    },
    {
      file,
      record: { index: 8, line: 9, id: "bad-turn-count" },
      path: "checklists[0]",
      message: "Checklist has 1 turn blocks, expected one per user turn (2)",
      value: 1,
    },
    {
      file,
      record: { index: 9, line: 10, id: "bad-weight-map" },
      path: "checklists[0][1].weight",
      message: "Item C2 has no weight in turn 0",
      value: "C2",
    },
  ]);
  assert.equal(
    formatImportError(report.errors[4]!),
    `${FIXTURES}/cm2_records.jsonl: line 7 (uuid bad-weights): checklists[0][0]: Checklist weights of turn 0 sum to 0.8, expected 1 (found 0.8)`,
  );
});

Deno.test("turn-block checklists are converted to stored variants sorted by turn, simple tools to OpenAI tools", async () => {
  const report = await importFiles([`${FIXTURES}/cm2_records.jsonl`], read);
  const [a, b] = report.records;
  assert.deepEqual(b!.checklists, a!.checklists);
  assert.deepEqual(a!.tools[0], {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather for a city.",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  });
});

Deno.test("importOpenAIChatJsonl() normalises OpenAI messages and hashes a stable uuid when there is no id", async () => {
  const file = `${FIXTURES}/openai_chat.jsonl`;
  const text = await read(file);
  const { records, errors } = importOpenAIChatJsonl(text, { file });
  assert.equal(records[0]!.uuid, "chat-with-id");
  const line2 = text.split("\n")[1]!;
  assert.equal(records[1]!.uuid, stableId("chat-", line2));
  assert.match(records[1]!.uuid, /^chat-[0-9a-f]{16}$/);
  const [, asst, , reply] = records[1]!.messages;
  assert.equal(asst!.content, "");
  assert.deepEqual(asst!.tool_calls[0], {
    id: "x",
    type: "function",
    function: { name: "get_weather", arguments: '{"city":"Rome"}' },
  });
  assert.equal(reply!.content, "25 C in Rome.");
  assert.deepEqual(errors.map(shortError), [{
    file: "openai_chat.jsonl",
    record: { index: 2, line: 3, id: "chat-orphan-tool" },
    path: "messages[1].role",
    message: "A user message must be followed by an assistant message",
    value: "tool",
    moreIssues: 1,
    more: [{
      path: "messages[1].role",
      message: "A tool message must answer a tool call of the assistant message before it",
      value: "tool",
    }],
  }]);
  assert.deepEqual(
    importOpenAIChatJsonl(text, { file }).records.map((r) => r.uuid),
    records.map((r) => r.uuid),
  );
});

Deno.test("importOpenAIChatJsonl() trims an unanswered last user message and counts it, as the other formats", () => {
  const line = JSON.stringify({
    id: "trailing",
    messages: [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
      { role: "user", content: "Thanks, bye" },
    ],
  });
  const { records, errors } = importOpenAIChatJsonl(`${line}\n`, { file: "t.jsonl" });
  assert.deepEqual(errors, []);
  assert.equal(records[0]!.messages.length, 2);
  assert.equal(records[0]!.meta?.trimmed_trailing_user, 1);
});

Deno.test("a line that is not JSON is not named after a nested id; errors read 1-based, with every problem", () => {
  const bad = '{"messages": [{"role": "assistant", "tool_calls": [{"id": "call_1"';
  const { errors } = importOpenAIChatJsonl(`${bad}\n`, { file: "t.jsonl" });
  assert.equal(errors[0]!.record.id, undefined);
  assert.match(formatImportError(errors[0]!), /^t\.jsonl: line 1: \$: Line is not valid JSON/);
  const many = JSON.stringify({
    id: "m",
    messages: [{ role: "tool", content: "" }, { role: "tool", content: "" }],
  });
  const e = importOpenAIChatJsonl(`${many}\n`, { file: "t.jsonl" }).errors[0]!;
  const text = formatImportError(e);
  assert.match(text, /^t\.jsonl: line 1 \(uuid m\): /);
  assert.equal(
    text.split("\n").length - 1,
    Math.min(e.moreIssues ?? 0, 4) + ((e.moreIssues ?? 0) > 4 ? 1 : 0),
  );
  assert.match(
    formatImportError({ file: "f", record: {}, path: "$", message: "Cannot read" }),
    /^f: whole file: /,
  );
});

Deno.test("importCm2Json() reads the RL form: extra_info.messages, JSON-string tools and checklist_list", async () => {
  const file = `${FIXTURES}/cm2_rl_form.json`;
  const { records, errors } = importCm2Json(await read(file), { file });
  assert.equal(records.length, 1);
  const r = records[0]!;
  assert.equal(r.uuid, "rl-1");
  assert.equal(r.messages.length, 8);
  assert.equal(r.tools[0]!.type, "function");
  assert.equal(r.checklists.length, 1);
  assert.deepEqual(r.meta, { data_source: "nvidia_nemotron_checklist" });
  assert.deepEqual(errors.map(shortError), [{
    file: "cm2_rl_form.json",
    record: { index: 1, id: "rl-2-bad-tools" },
    path: "extra_info.tools",
    message: "Tools string is not valid JSON",
    value: '[{"name": "get_weather"',
  }]);
  const noUuid = cm2RecordFromRaw({ extra_info: { messages: [], tools: "[]", original_index: 7 } });
  assert.ok(noUuid.ok && noUuid.value.uuid === "7");
});

Deno.test("detectFormat() picks the importer from the name and the content", () => {
  assert.equal(detectFormat("a.jsonl", '{"uuid":"x","messages":[]}\n'), "cm2-jsonl");
  assert.equal(detectFormat("a.jsonl", '\n{"extra_info":{}}'), "cm2-jsonl");
  assert.equal(detectFormat("a.jsonl", '{"messages":[]}\n'), "openai-jsonl");
  assert.equal(detectFormat("a.json", '[{"task_id":1,"traj":[]}]'), "tau-bench");
  assert.equal(detectFormat("a.json", '{"conversation":[],"conversation_id":"x"}'), "tooltalk");
  assert.equal(detectFormat("a.json", '[{"uuid":"x"}]'), "cm2-json");
  assert.equal(detectFormat("a.json", '{"uuid":"x"}'), "cm2-json");
  assert.equal(detectFormat("a.json", '{"conversation": [{"role": "us'), "tooltalk");
  assert.equal(detectFormat("a.json", '{"foo": 1}'), undefined);
  assert.equal(detectFormat("a.txt", "hello"), undefined);
});

Deno.test("importFiles() counts unreadable, unknown and duplicate inputs instead of dropping them", async () => {
  const files: Record<string, string> = {
    "/x/a.jsonl":
      '{"uuid":"u1","tools":[],"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]}\n',
    "/x/b.json": '{"foo": 1}',
  };
  const readFake = (p: string) => {
    const t = files[p];
    if (t === undefined) throw new Error(`No such file ${p}`);
    return t;
  };
  const report = await importFiles(["/x/a.jsonl", "/x/a.jsonl", "/x/b.json", "/x/missing.json"], readFake);
  assert.equal(report.records.length, 1);
  assert.deepEqual(
    report.files.map((f) => [f.file, f.imported, f.errored, f.failed]),
    [["/x/a.jsonl", 1, 0, false], ["/x/a.jsonl", 0, 1, false], ["/x/b.json", 0, 0, true], [
      "/x/missing.json",
      0,
      0,
      true,
    ]],
  );
  assert.deepEqual(report.errors.map((e) => [e.path, e.message]), [
    ["uuid", "Record uuid is not unique, first imported from /x/a.jsonl"],
    [
      "$",
      "File format is not recognised; the formats are cm2-json, cm2-jsonl, openai-jsonl, tooltalk, tau-bench (--format)",
    ],
    ["$", "File cannot be read: No such file /x/missing.json"],
  ]);
  const tt = await importFiles(["/y/conv.json"], (p) => {
    if (p !== "/y/conv.json") throw new Error(`No such file ${p}`);
    return '{"conversation": []}';
  });
  assert.match(
    tt.errors[0]!.message,
    /^No derived\/tooltalk_openai_tools\.derived\.json found above the file$/,
  );
});

Deno.test("the sample dataset validates and has a checklist on every record", async () => {
  const report = await importFiles([SAMPLE], read);
  assert.deepEqual(report.errors, []);
  assert.ok(report.records.length >= 8 && report.records.length <= 12);
  for (const r of report.records) {
    assert.equal(r.checklists.length, 1, r.uuid);
    assert.ok(r.messages.filter((m) => m.role === "user").length >= 2, r.uuid);
    for (const block of r.checklists[0]!) {
      const sum = block.reduce((s, i) => s + i.weight, 0);
      assert.ok(Math.abs(sum - 1) < 1e-9, `${r.uuid}: ${sum}`);
    }
  }
});

Deno.test("scripts/make_sample.ts regenerates the committed sample byte for byte", async () => {
  const text = await buildSample(`${BENCH}/tooltalk`, read);
  assert.equal(text, await read(SAMPLE));
});

Deno.test("ruleWeights() rounds to 4 decimals and sums to 1 within 1e-9", () => {
  for (
    const units of [[2, 1, 2], [2, 1, 2, 2, 1, 2, 2], [1, 1, 1], [2], [2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 2]]
  ) {
    const w = ruleWeights(units);
    assert.ok(Math.abs(w.reduce((s, x) => s + x, 0) - 1) < 1e-9, JSON.stringify(w));
    for (const x of w) assert.equal(Math.round(x * 1e4) / 1e4, x);
  }
  assert.deepEqual(ruleWeights([1, 1, 1]), [0.3334, 0.3333, 0.3333]);
});

Deno.test("benchmark files that are not training data are named, not imported record by record", async () => {
  const bench = new URL("../../../shared/benchdata/", import.meta.url);
  const files = [
    [new URL("tau2-bench/v1.0.1/airline/tasks.json", bench), /τ²-bench task file/],
    [new URL("bfcl-v4/data/BFCL_v4_multi_turn_base.json", bench), /BFCL test file/],
    [new URL("bfcl-v4/data/multi_turn_func_doc/math_api.json", bench), /BFCL function-doc file/],
  ] as const;
  for (const [url, what] of files) {
    const file = url.pathname;
    const report = await importFiles([file], (p) => Deno.readTextFile(p));
    assert.equal(report.records.length, 0);
    assert.equal(report.errors.length, 1, JSON.stringify(report.errors.slice(0, 2)));
    assert.match(report.errors[0]!.message, what);
  }
  const unknown = await importFiles(["x.txt"], () => "hello");
  assert.match(
    unknown.errors[0]!.message,
    /formats are cm2-json, cm2-jsonl, openai-jsonl, tooltalk, tau-bench/,
  );
});

Deno.test("an empty file is a file-level error, not 0 records imported", async () => {
  const texts: Record<string, string> = { "/x/empty.jsonl": "\n  \n", "/x/ok.jsonl": "" };
  const report = await importFiles(["/x/empty.jsonl"], (p) => texts[p]!);
  assert.equal(report.records.length, 0);
  assert.equal(report.errors.length, 1);
  assert.match(formatImportError(report.errors[0]!), /whole file: \$: File holds no record/);
  assert.equal(report.files[0]!.failed, true);
});

Deno.test("scripts/make_learning_data.ts regenerates the committed learning dataset; its records are disjoint tasks", async () => {
  const text = buildLearningData();
  assert.equal(text, await Deno.readTextFile(`${ROOT}/data/learning/tool_tasks.jsonl`));
  const records = text.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(records.length, 210);
  assert.equal(new Set(records.map((r) => r.meta.task)).size, records.length, "every (tool, entity) once");
  for (const r of records) {
    assert.ok(validateRecord(r).ok, r.uuid);
    assert.ok(r.checklists[0][0].every((i: { check?: unknown }) => i.check), `${r.uuid}: every item checked`);
  }
});
