/**
 * Episodes over real HTTP: the episode engine with `llm/client.ts` models against the scripted
 * OpenAI-compatible test double, on a ToolTalk-derived sample record (MIT, see data/sample/README.md).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { episodeVerdicts } from "../../core/episode_judge.ts";
import { runEpisode, type RunEpisodeOptions } from "../../core/episode_loop.ts";
import type { ChatModel } from "../../core/llm_types.ts";
import { type TrajectoryRecord, validateRecord } from "../../core/records.ts";
import { computeAdvantages } from "../../core/rewards.ts";
import { createChatModel } from "../../llm/client.ts";
import { withoutChecks } from "../harness/training.ts";
import {
  judgeAlways,
  type ScriptedReply,
  type ScriptedServer,
  scriptFromQueue,
  startScriptedServer,
} from "../scripted_server.ts";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const UUID = "tooltalk-AccountTools-Alarm-Calendar-AddAlarm-0";

function sampleRecord(): TrajectoryRecord {
  const path = new URL("../../data/sample/tooltalk_sample.jsonl", import.meta.url);
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const raw = JSON.parse(line);
    if (raw.uuid !== UUID) continue;
    const v = validateRecord(raw);
    if (!v.ok) throw new Error(`Sample record ${UUID} is invalid: ${JSON.stringify(v.issues)}`);
    // These tests drive the LLM judge over HTTP: every item goes to it (no program checks, see judge_savings_test).
    return withoutChecks(v.record);
  }
  throw new Error(`Sample record ${UUID} not found`);
}

const REGISTER = {
  name: "Julian Hester",
  phone: "708-340-0190",
  email: "j.hester@gahoo.com",
  password: "Meizuch4uu",
  username: "hestler",
};
const CREATE_EVENT = {
  session_token: "e149636f-d9ca-0792",
  name: "Client Meeting",
  event_type: "meeting",
  start_time: "2023-09-12 08:00:00",
  end_time: "2023-09-12 09:00:00",
  attendees: ["alice59"],
};
const ADD_ALARM = { session_token: "e149636f-d9ca-0792", time: "07:30:00" };

function model(server: ScriptedServer, role: ChatModel["role"], name: string): ChatModel {
  return createChatModel({ role, baseURL: server.url, model: name, timeoutMs: 5_000, defaults: {} });
}

async function withServer<T>(
  policy: ScriptedReply[],
  judge: Parameters<typeof judgeAlways>[0],
  simulator: ScriptedReply[],
  run: (server: ScriptedServer, opts: { models: Parameters<typeof runEpisode>[1] }) => Promise<T>,
): Promise<T> {
  const server = startScriptedServer({
    roles: {
      "policy-model": scriptFromQueue(policy),
      "judge-model": judgeAlways(judge),
      "sim-model": scriptFromQueue(simulator),
    },
  });
  try {
    return await run(server, {
      models: {
        policy: model(server, "policy", "policy-model"),
        judge: model(server, "judge", "judge-model"),
        simulator: model(server, "simulator", "sim-model"),
      },
    });
  } finally {
    await server.close();
  }
}

const opts: RunEpisodeOptions = { hash: sha256, judge: { skipAbsentFocus: false } };
const think = (s: string) => `<think>\n${s}\n</think>\n\n`;

/** The reference behaviour: the same calls as the recorded dialogue (key order shuffled), good replies. */
const goodPolicy: ScriptedReply[] = [
  { content: think("Need details.") + "Sure. Which username, password, email, name and phone?" },
  { content: think("Register."), toolCalls: [{ name: "RegisterUser", arguments: REGISTER }] },
  { content: think("Done.") + "Account made. What is the event name and time?" },
  {
    content: think("Event and alarm."),
    toolCalls: [{ name: "CreateEvent", arguments: CREATE_EVENT }, { name: "AddAlarm", arguments: ADD_ALARM }],
  },
  { content: think("Done.") + "I created the event and the alarm." },
];

Deno.test("a scripted episode replays recorded calls and user turns until every turn is done", async () => {
  const record = sampleRecord();
  await withServer(goodPolicy, true, [], async (server, { models }) => {
    const { state } = await runEpisode(record, models, opts);
    assert.deepEqual(state.end, { reason: "reply-complete", ok: true });
    const recordedUsers = record.messages.filter((m) => m.role === "user").map((m) => m.content);
    assert.deepEqual(state.messages.filter((m) => m.role === "user").map((m) => m.content), recordedUsers);
    assert.equal(state.metrics.replayHits, 3);
    assert.equal(state.metrics.simulated, 0);
    assert.equal(state.messages[5]!.content, record.messages[5]!.content, "the recorded RegisterUser output");
    // judge: turn 0: 1 step x 1 item; turn 1: 2 steps x 3 items; turn 2: 2 steps x 5 items
    assert.deepEqual(server.countBy(), { "policy-model": 5, "judge-model": 17 });
    const judgeCall = server.calls.find((c) => c.model === "judge-model")!;
    assert.equal((judgeCall.response_format as { type: string }).type, "json_schema");
    const prompt = String(judgeCall.messages[0]!.content);
    assert.ok(
      prompt.includes("# Previous Messages (context only, not evaluated)\nRole: system\ncontent: You are"),
    );
    assert.ok(
      prompt.includes("# Current Messages to Evaluate\n# Turn: 0\nRole: user\ncontent: Hi assistant"),
    );
    const lastJudge = server.calls.filter((c) => c.model === "judge-model").at(-1)!;
    assert.ok(
      String(lastJudge.messages[0]!.content).includes("# Turn: 1\nRole: user"),
      "previous turns listed",
    );
    const policyCall = server.calls.filter((c) => c.model === "policy-model")[4]!;
    assert.equal(policyCall.tools?.length, record.tools.length);
    assert.deepEqual(policyCall.messages.map((m) => m.role), state.messages.slice(0, -1).map((m) => m.role));
    const verdicts = episodeVerdicts(state);
    assert.deepEqual(verdicts.turns.map((t) => [t.complete, t.steps.length]), [[true, 1], [true, 2], [
      true,
      2,
    ]]);
    const { episodes } = computeAdvantages({ checklist: record.checklists[0]!, episodes: [verdicts] });
    assert.equal(episodes[0]!.reward, 1);
  });
});

Deno.test("a scripted episode ends when the strictness gate fails", async () => {
  const record = sampleRecord();
  // the required "call RegisterUser" item of turn 1 is never satisfied
  await withServer(goodPolicy, (p) => !p.includes("call RegisterUser"), [], async (server, { models }) => {
    const { state } = await runEpisode(record, models, opts);
    assert.deepEqual(state.end, {
      reason: "gate-failed",
      ok: true,
      detail: "Turn 1 failed its strictness gate",
    });
    assert.equal(state.messages.filter((m) => m.role === "user").length, 2, "turn 2 is never replayed");
    assert.deepEqual(server.countBy(), { "policy-model": 3, "judge-model": 7 });
    const { episodes } = computeAdvantages({
      checklist: record.checklists[0]!,
      episodes: [episodeVerdicts(state)],
    });
    assert.ok(Math.abs(episodes[0]!.reward - (1 + 0.6) / 3) < 1e-12);
  });
});

Deno.test("a scripted episode ends on an unknown tool and on a schema violation", async () => {
  const record = sampleRecord();
  const unknown: ScriptedReply[] = [{
    content: think("x"),
    toolCalls: [{ name: "WipeDisk", arguments: {} }],
  }];
  await withServer(unknown, true, [], async (server, { models }) => {
    const { state } = await runEpisode(record, models, opts);
    assert.equal(state.end?.reason, "unknown-tool");
    assert.match(state.messages.at(-1)!.content, /error_tool_call.*WipeDisk/);
    assert.deepEqual(
      server.countBy(),
      { "policy-model": 1, "judge-model": 1 },
      "the unfinished turn is judged",
    );
    assert.deepEqual(episodeVerdicts(state).turns, [{
      complete: false,
      steps: [{ messageIndex: 2, sat: [true] }],
    }]);
  });
  const { email: _email, ...noEmail } = REGISTER;
  const invalid: ScriptedReply[] = [
    goodPolicy[0]!,
    {
      content: think("Register."),
      toolCalls: [{ name: "RegisterUser", arguments: { ...noEmail, age: 30 } }],
    },
  ];
  await withServer(invalid, true, [], async (_server, { models }) => {
    const { state } = await runEpisode(record, models, { ...opts, unfinishedTurn: "no-credit" });
    assert.equal(state.end?.reason, "tool-error");
    const body = JSON.parse(state.messages.at(-1)!.content);
    assert.equal(body.error_tool_call.code, "SCHEMA_VALIDATION_FAILED");
    assert.deepEqual(body.error_tool_call.details.errors, [
      "Missing required argument 'email'",
      "Unexpected argument 'age'",
    ]);
  });
});

Deno.test("a scripted episode simulates an unrecorded call from a text-written tool call", async () => {
  const record = sampleRecord();
  const policy: ScriptedReply[] = [
    {
      content: think("Check the name first.") +
        '<tool_call>\n{"name": "QueryUser", "arguments": {"username": "hestler", "session_token": "none"}}\n</tool_call>',
    },
    { content: think("Free.") + "That username is free. Give me your details." },
    { content: think("Hmm.") + "Thanks! All set." },
  ];
  const simulator: ScriptedReply[] = [{
    json: { analysis: "No such user yet.", execution_result: { user: null } },
  }];
  await withServer(policy, false, simulator, async (server, { models }) => {
    const { state, cache } = await runEpisode(record, models, opts);
    assert.equal(server.countBy()["sim-model"], 1);
    const simCall = server.calls.find((c) => c.model === "sim-model")!;
    assert.deepEqual(
      (simCall.response_format as { json_schema: { name: string } }).json_schema.name,
      "tool_execution_response",
    );
    assert.ok(
      String(simCall.messages[1]!.content).includes("Tool name:\nRegisterUser\n"),
      "recorded I/O as examples",
    );
    assert.equal(state.messages[3]!.content, '{"user": null}');
    assert.equal(state.meta[2]!.calls, "text");
    assert.equal(Object.keys(cache.entries).length, 1);
    // turn 0's only item (a reply check) is judged false but is not required, so the episode goes on;
    // turn 1 never calls RegisterUser (a required item), so its gate fails
    assert.deepEqual(state.turns.map((t) => t.passed), [[true], [false]]);
    assert.deepEqual([state.end?.reason, state.end?.ok], ["gate-failed", true]);
  });
});
