import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  applyPolicyResult,
  applyToolResults,
  END_REASONS,
  type EpisodeOptions,
  type EpisodeState,
  episodeToolIndex,
  estimateTokens,
  policyRequest,
  responseTokens,
  startEpisode,
  toolCallsToRun,
  toolResultFromResolution,
  toolResultFromSimulation,
} from "../../core/episode.ts";
import {
  applyJudgement,
  episodeVerdicts,
  judgeRoundRequests,
  verdictFromResult,
} from "../../core/episode_judge.ts";
import { type EpisodeModels, runEpisode } from "../../core/episode_loop.ts";
import type { ChatModel, ChatRequest, ChatResult, ChatToolCall } from "../../core/llm_types.ts";
import type { ChecklistItem, TrajectoryRecord } from "../../core/records.ts";
import { computeAdvantages } from "../../core/rewards.ts";
import { cachePut, emptyCache, parseSimulation, resolveToolCall } from "../../core/simulator.ts";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

function item(id: string, over: Partial<ChecklistItem> = {}): ChecklistItem {
  return {
    id,
    evidence: [{ turn: 0, step: 1, from: "assistant.tool_calls", snippet: `${id} snippet` }],
    focus_on: "assistant.tool_calls",
    question: `Question ${id}?`,
    pass_condition: `Pass ${id}.`,
    failure_examples: [],
    required_for_next_turn: false,
    dependence: [],
    weight: 0,
    ...over,
  };
}

/** A small synthetic two-turn record with one checklist variant (or three, for the voting test). */
function record(variants = 1): TrajectoryRecord {
  const turn0 = [
    item("C0", { required_for_next_turn: true, weight: 0.5, question: "Weather call made?" }),
    item("C1", { focus_on: "tool.content", weight: 0.2, question: "Weather returned?" }),
    item("C2", {
      required_for_next_turn: true,
      weight: 0.3,
      dependence: ["C1"],
      question: "Reply gives temp?",
    }),
  ];
  const turn1 = [
    item("C0", { required_for_next_turn: true, weight: 0.6, question: "Booking call made?" }),
    item("C1", { weight: 0.4, question: "Reply confirms booking?" }),
  ];
  return {
    uuid: "rec-ep",
    tools: [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather now",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
      {
        type: "function",
        function: {
          name: "book_table",
          description: "Book a table",
          parameters: {
            type: "object",
            properties: { restaurant: { type: "string" }, people: { type: "integer" } },
            required: ["restaurant", "people"],
          },
        },
      },
    ],
    messages: [
      { role: "system", content: "You help with plans.", tool_calls: [] },
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
      { role: "tool", content: '{"temp": 21}', tool_calls: [] },
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
    checklists: Array.from({ length: variants }, () => structuredClone([turn0, turn1])),
  };
}

function result(content: string, toolCalls: ChatToolCall[] = [], over: Partial<ChatResult> = {}): ChatResult {
  return {
    content,
    toolCalls,
    finishReason: toolCalls.length > 0 ? "tool_calls" : "stop",
    usage: { promptTokens: 0, completionTokens: 0, latencyMs: 1 },
    model: "fake",
    ...over,
  };
}

const apiCall = (name: string, args: unknown, id = "x"): ChatToolCall => ({
  id,
  type: "function",
  function: { name, arguments: JSON.stringify(args) },
});

/** A fake model answering from a queue (or a function of the request); records every request. */
function fake(role: ChatModel["role"], answer: ChatResult[] | ((req: ChatRequest, n: number) => ChatResult)) {
  const requests: ChatRequest[] = [];
  const model: ChatModel & { requests: ChatRequest[] } = {
    role,
    model: `${role}-model`,
    requests,
    complete(req) {
      requests.push(req);
      const n = requests.length - 1;
      const next = typeof answer === "function" ? answer(req, n) : answer[n];
      if (!next) return Promise.reject(new Error(`${role} script overran at call ${n}`));
      return Promise.resolve(next);
    },
  };
  return model;
}

const verdict = (answer: boolean) => result(JSON.stringify({ analysis_of_pass_condition: "-", answer }));
/** Judge that answers from the question in the prompt. */
const judgeBy = (decide: (prompt: string) => boolean) =>
  fake("judge", (req) => verdict(decide(req.messages[0]!.content)));
const judgeAll = (answer: boolean) => judgeBy(() => answer);
/** A judge that answers as a careful model would on the happy path: a reply item holds once the reply is there. */
const honestly = (p: string) =>
  (!p.includes("Reply gives temp?") || p.includes("21 degrees")) &&
  (!p.includes("Reply confirms booking?") || p.includes("Booked, reference"));

const happyPolicy = () =>
  fake("policy", [
    result("<think>\nlook\n</think>", [apiCall("get_weather", { city: "Paris" })]),
    result("<think>\nok\n</think>\n\nIt is 21 degrees."),
    result(
      '<think>\nbook\n</think>\n\n<tool_call>\n{"name": "book_table", "arguments": {"people": 2, "restaurant": "Chez Nous"}}\n</tool_call>',
    ),
    result("Booked, reference B-17."),
  ]);

function models(policy: ChatModel, judge: ChatModel = judgeAll(true), simulator?: ChatModel): EpisodeModels {
  return { policy, judge, simulator: simulator ?? fake("simulator", []) };
}

Deno.test("startEpisode() opens with the system message, the tools and the first user message", () => {
  const s = startEpisode(record());
  assert.deepEqual(s.messages, [
    { role: "system", content: "You help with plans." },
    { role: "user", content: "Weather in Paris?" },
  ]);
  assert.deepEqual(s.meta.map((m) => [m.turn, m.step, m.source]), [[0, null, "record"], [0, null, "record"]]);
  assert.deepEqual(s.tools.map((t) => t.function.name), ["get_weather", "book_table"]);
  assert.equal(s.phase, "policy");
  assert.deepEqual(s.turns, [{
    userIndex: 1,
    steps: [],
    complete: false,
    judged: false,
    passed: null,
    sat: [[]],
  }]);
  assert.equal(s.contextTokens, estimateTokens(s.messages, s.tools));
  assert.deepEqual(JSON.parse(JSON.stringify(s)), s, "the state is plain JSON");
  assert.throws(() => startEpisode({ ...record(), checklists: [] }), /has no checklist/);
  const short = record();
  short.checklists[0] = short.checklists[0]!.slice(0, 1);
  assert.throws(() => startEpisode(short), /2 user messages but 1 checklist turns/);
});

Deno.test("policyRequest() sends messages and tools and caps max_tokens by the context budget", () => {
  const s = startEpisode(record(), {
    maxContextTokens: 500,
    maxResponseTokens: 8000,
    policySampling: { temperature: 1 },
  });
  const req = policyRequest(s);
  assert.equal(req.messages.length, 2);
  assert.equal(req.tools?.length, 2);
  assert.deepEqual(req.sampling, { temperature: 1, max_tokens: 500 - s.contextTokens - 1 });
  const roomy = startEpisode(record(), { maxEpisodeResponseTokens: 20_000 });
  assert.equal(policyRequest(roomy).sampling?.max_tokens, 8000);
  // by default the episode's response budget (8 000) is the tighter one
  assert.equal(policyRequest(startEpisode(record())).sampling?.max_tokens, 7999);
});

Deno.test("runEpisode() replays recorded calls, passes the gate and replays the next user message", async () => {
  const judge = judgeAll(true);
  const { state } = await runEpisode(record(), models(happyPolicy(), judge), { hash: sha256 });
  assert.deepEqual(state.end, { reason: "reply-complete", ok: true });
  assert.deepEqual(state.messages.map((m) => m.role), [
    "system",
    "user",
    "assistant",
    "tool",
    "assistant",
    "user",
    "assistant",
    "tool",
    "assistant",
  ]);
  assert.equal(state.messages[5]!.content, "Book Chez Nous for 2.", "the recorded user message");
  assert.equal(state.messages[3]!.content, '{"temp": 21}');
  assert.equal(state.messages[7]!.content, '{"booking_id": "B-17"}');
  assert.equal(state.messages[7]!.tool_call_id, state.messages[6]!.tool_calls![0]!.id);
  assert.deepEqual(state.meta.map((m) => [m.turn, m.step]), [
    [0, null],
    [0, null],
    [0, 0],
    [0, 0],
    [0, 1],
    [1, null],
    [1, 0],
    [1, 0],
    [1, 1],
  ]);
  assert.equal(state.meta[2]!.calls, "api");
  assert.equal(state.meta[6]!.calls, "text");
  assert.equal(state.metrics.replayHits, 2);
  assert.equal(state.metrics.simulated, 0);
  assert.equal(judge.requests.length, 2 * 3 + 2 * 2, "one call per (step, item)");
  const v = episodeVerdicts(state);
  assert.deepEqual(v, {
    ok: true,
    reason: "reply-complete",
    turns: [
      {
        complete: true,
        steps: [{ messageIndex: 2, sat: [true, true, true] }, { messageIndex: 4, sat: [true, true, true] }],
      },
      {
        complete: true,
        steps: [{ messageIndex: 6, sat: [true, true] }, { messageIndex: 8, sat: [true, true] }],
      },
    ],
  });
  const reward = (preset: "fixed" | "reference") =>
    computeAdvantages({ checklist: record().checklists[0]!, episodes: [v] }, { preset }).episodes[0]!.reward;
  assert.equal(reward("reference"), 1);
  // C2 (depends on C1) is judged true at step 0, before C1 held, and stays true: under eq. 2 it never pays
  assert.equal(reward("fixed"), (1 - 0.3 + 1) / 2);
});

Deno.test("the policy sees text-written calls as structured calls, without the raw blocks", async () => {
  const policy = happyPolicy();
  await runEpisode(record(), models(policy), { hash: sha256 });
  const last = policy.requests[3]!;
  const step = last.messages[6]!;
  assert.equal(step.content, "<think>\nbook\n</think>");
  assert.deepEqual(JSON.parse(step.tool_calls![0]!.function.arguments), {
    people: 2,
    restaurant: "Chez Nous",
  });
});

Deno.test("a failed strictness gate ends the episode without the next user message", async () => {
  const judge = judgeBy((p) => !p.includes("Reply gives temp?"));
  const { state } = await runEpisode(record(), models(happyPolicy(), judge), { hash: sha256 });
  assert.equal(state.end?.reason, "gate-failed");
  assert.equal(state.end?.ok, true);
  assert.equal(state.messages.filter((m) => m.role === "user").length, 1);
  assert.deepEqual(state.turns[0]!.passed, [false]);
  const v = episodeVerdicts(state);
  assert.equal(v.turns.length, 1);
  assert.deepEqual(v.turns[0]!.steps.map((s) => s.sat), [[true, true, false], [true, true, false]]);
});

Deno.test("a malformed tool call appends an error_tool_call message and ends with format-error", async () => {
  const policy = fake("policy", [
    result('<think>\nx\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {city}}\n</tool_call>'),
  ]);
  const judge = judgeAll(true);
  const { state } = await runEpisode(record(), models(policy, judge), {
    hash: sha256,
    judge: { skipAbsentFocus: false },
  });
  assert.equal(state.end?.reason, "format-error");
  assert.match(state.end?.detail ?? "", /not valid JSON/);
  const last = state.messages.at(-1)!;
  assert.equal(last.role, "tool");
  assert.match(last.content, /^\{"error_tool_call": "A tool call is not valid JSON/);
  assert.equal(state.meta.at(-1)!.source, "engine");
  assert.equal(judge.requests.length, 3, "the unfinished turn is judged (unfinishedTurn: judge)");
  assert.deepEqual(episodeVerdicts(state).turns, [{
    complete: false,
    steps: [{ messageIndex: 2, sat: [true, true, true] }],
  }]);
  // By default the two items on tool calls are false without asking: the step made no call the engine could run.
  const strictJudge = judgeAll(true);
  const strict = await runEpisode(
    record(),
    models(fake("policy", [result(state.messages[2]!.content)]), strictJudge),
    {
      hash: sha256,
    },
  );
  assert.equal(strictJudge.requests.length, 1);
  assert.deepEqual(strict.state.turns[0]!.sat[0], [[false, true, false]]);
  assert.deepEqual(strict.state.turns[0]!.by?.[0], ["pmp"]);

  const noCredit = await runEpisode(
    record(),
    models(fake("policy", [result("\n<tool_call>\nnope\n</tool_call>")]), judgeAll(true)),
    {
      hash: sha256,
      unfinishedTurn: "no-credit",
    },
  );
  assert.equal(noCredit.state.end?.reason, "format-error");
  assert.deepEqual(episodeVerdicts(noCredit.state).turns, [{
    complete: false,
    steps: [{ messageIndex: 2, sat: [false, false, false] }],
  }]);
});

Deno.test("unknown tools and schema violations end the episode as unknown-tool and tool-error", async () => {
  const unknown = await runEpisode(
    record(),
    models(
      fake("policy", [result("", [apiCall("launch", {}), apiCall("get_weather", { city: "Paris" })])]),
      judgeAll(false),
    ),
    { hash: sha256, unfinishedTurn: "no-credit" },
  );
  assert.equal(unknown.state.end?.reason, "unknown-tool");
  assert.equal(unknown.state.metrics.toolErrors, 1);
  assert.equal(unknown.state.metrics.replayHits, 1);
  assert.deepEqual(unknown.state.messages.slice(-2).map((m) => m.role), ["tool", "tool"]);

  const schema = await runEpisode(
    record(),
    models(fake("policy", [result("", [apiCall("get_weather", { town: "Paris" })])])),
    { hash: sha256, unfinishedTurn: "no-credit" },
  );
  assert.equal(schema.state.end?.reason, "tool-error");
  assert.match(schema.state.messages.at(-1)!.content, /SCHEMA_VALIDATION_FAILED/);
});

Deno.test("endOnToolError false lets the policy see the error and go on", async () => {
  const policy = fake("policy", [
    result("", [apiCall("get_weather", { town: "Paris" })]),
    result("", [apiCall("get_weather", { city: "Paris" })]),
    result("<think>\nok\n</think>\n\nIt is 21."),
    result("", [apiCall("book_table", { restaurant: "Chez Nous", people: 2 })]),
    result("Booked."),
  ]);
  const { state } = await runEpisode(record(), models(policy), { hash: sha256, endOnToolError: false });
  assert.equal(state.end?.reason, "reply-complete");
  assert.equal(state.metrics.toolErrors, 1);
  assert.equal(state.turns[0]!.steps.length, 3);
});

Deno.test("unmatched calls are simulated once and then served from the shared consistency cache", async () => {
  const simulator = fake("simulator", [
    result(JSON.stringify({ analysis: "-", execution_result: { temp: 30 } })),
  ]);
  const rome = () => result("", [apiCall("get_weather", { city: "Rome" })]);
  const policy = fake("policy", [rome(), rome(), result("Warm.")]);
  const { state, cache } = await runEpisode(record(), models(policy, judgeAll(false), simulator), {
    hash: sha256,
  });
  assert.equal(state.end?.reason, "gate-failed");
  assert.equal(simulator.requests.length, 1);
  assert.equal(state.metrics.simulated, 1);
  assert.equal(state.metrics.cacheHits, 1);
  assert.equal(state.messages[3]!.content, '{"temp": 30}');
  assert.equal(state.messages[5]!.content, '{"temp": 30}');
  assert.deepEqual(state.meta.filter((m) => m.source === "tool").map((m) => m.result), [
    "simulated",
    "cached",
  ]);
  // a second episode of the group shares the cache: no simulator call at all
  const again = await runEpisode(
    record(),
    models(fake("policy", [rome(), result("Warm.")]), judgeAll(false), fake("simulator", [])),
    {
      hash: sha256,
      cache,
    },
  );
  assert.equal(again.state.metrics.cacheHits, 1);
  assert.equal(again.state.metrics.simulatorFailures, 0);
});

Deno.test("a simulator failure ends the episode with ok=false", async () => {
  const rome = result("", [apiCall("get_weather", { city: "Rome" })]);
  for (const simulator of [fake("simulator", [result("not json")]), fake("simulator", [])]) {
    const { state } = await runEpisode(record(), models(fake("policy", [rome]), judgeAll(true), simulator), {
      hash: sha256,
    });
    assert.deepEqual([state.end?.reason, state.end?.ok], ["simulator-failure", false]);
    assert.equal(state.metrics.simulatorFailures, 1);
    assert.equal(episodeVerdicts(state).ok, false);
  }
});

Deno.test("limits end the episode: length finish, steps and context", async () => {
  const cut = await runEpisode(
    record(),
    models(fake("policy", [result("<think>\nlong", [], { finishReason: "length" })])),
    {
      hash: sha256,
      unfinishedTurn: "no-credit",
    },
  );
  assert.equal(cut.state.end?.reason, "limit-context");
  assert.equal(cut.state.messages.at(-1)!.role, "assistant");

  const loop = fake("policy", () => result("", [apiCall("get_weather", { city: "Paris" })]));
  const steps = await runEpisode(record(), models(loop), { hash: sha256, maxAssistantSteps: 3 });
  assert.equal(steps.state.end?.reason, "limit-steps");
  assert.equal(steps.state.assistantSteps, 3);
  assert.equal(steps.state.turns[0]!.judged, true, "the unfinished turn was judged");

  const big = fake(
    "policy",
    () =>
      result("", [apiCall("get_weather", { city: "Paris" })], {
        usage: { promptTokens: 900, completionTokens: 50, latencyMs: 1 },
      }),
  );
  const ctx = await runEpisode(record(), models(big), { hash: sha256, maxContextTokens: 952 });
  assert.equal(ctx.state.end?.reason, "limit-context");
  assert.equal(ctx.state.assistantSteps, 1);
});

Deno.test("the episode response cap counts every token after the first prompt and ends with limit-response", async () => {
  const start = startEpisode(record(), { maxEpisodeResponseTokens: 300, maxResponseTokens: 8000 });
  assert.equal(start.promptTokens, start.contextTokens, "the first prompt is not response");
  assert.equal(responseTokens(start), 0);
  // the step's max_tokens is what is left of the response budget
  assert.equal(policyRequest(start).sampling?.max_tokens, 299);
  // each step: the context grows by 150 tokens (usage is authoritative), so the second step crosses 300
  let prompt = start.contextTokens;
  const policy = fake("policy", () => {
    const r = result("", [apiCall("get_weather", { city: "Paris" })], {
      usage: { promptTokens: prompt, completionTokens: 150, latencyMs: 1 },
    });
    prompt += 150 + 10;
    return r;
  });
  const { state } = await runEpisode(record(), models(policy), {
    hash: sha256,
    maxEpisodeResponseTokens: 300,
    unfinishedTurn: "no-credit",
  });
  assert.equal(state.end?.reason, "limit-response");
  assert.match(state.end?.detail ?? "", /The episode's response reached \d+ tokens/);
  assert.equal(state.assistantSteps, 2);
  assert.equal(state.turns.length, 1, "turn 1 never happens, so it earns nothing");
  const rewards = computeAdvantages(
    { checklist: record().checklists[0]!, episodes: [episodeVerdicts(state)] },
    { preset: "reference" },
  );
  assert.deepEqual(rewards.episodes[0]!.turnScores, [0, 0]);
});

Deno.test("the user-turn limit ends the episode after the judged turns", async () => {
  const { state } = await runEpisode(record(), models(happyPolicy()), { hash: sha256, maxUserTurns: 1 });
  assert.equal(state.end?.reason, "limit-turns");
  assert.equal(state.judgedTurns, 1);
});

Deno.test("model and judge failures end the episode with ok=false, never a silent 0", async () => {
  const policyDown = await runEpisode(record(), models(fake("policy", [])), { hash: sha256 });
  assert.deepEqual([policyDown.state.end?.reason, policyDown.state.end?.ok], ["model-failure", false]);
  assert.match(policyDown.state.end?.detail ?? "", /overran/);

  const garbage = fake("judge", () => result("I think it passes"));
  const bad = await runEpisode(record(), models(happyPolicy(), garbage), { hash: sha256 });
  assert.deepEqual([bad.state.end?.reason, bad.state.end?.ok], ["judge-failure", false]);
  assert.equal(episodeVerdicts(bad.state).ok, false);
  assert.equal(garbage.requests.length % 2, 0, "an answer that does not parse is asked again once");
  assert.ok((bad.state.metrics.judgeRetries ?? 0) > 0);

  const down = await runEpisode(record(), models(happyPolicy(), fake("judge", [])), { hash: sha256 });
  assert.equal(down.state.end?.reason, "judge-failure");
});

Deno.test("a judge answer that does not parse is asked again, and a good second answer counts", async () => {
  // Every first answer is prose; the same request asked again gets a real verdict.
  const seen = new Map<string, number>();
  const answers = fake("judge", (req) => {
    const key = JSON.stringify(req.messages);
    const k = seen.get(key) ?? 0;
    seen.set(key, k + 1);
    return k === 0 ? result("Let me think about it") : verdict(true);
  });
  const run = await runEpisode(record(), models(happyPolicy(), answers), { hash: sha256 });
  assert.equal(run.state.end?.reason, "reply-complete");
  assert.equal(run.state.metrics.judgeRetries, run.state.metrics.judgeVerdicts);
  assert.equal(answers.requests.length, 2 * run.state.metrics.judgeVerdicts);
});

Deno.test("k votes decide each cell by majority, ties false", async () => {
  let n = 0;
  // per cell the three votes arrive in order: true, false, <true for C0 and C1, false for C2>
  const judge = fake("judge", (req) => {
    const vote = n++ % 3;
    if (vote === 0) return verdict(true);
    if (vote === 1) return verdict(false);
    return verdict(!req.messages[0]!.content.includes("Reply gives temp?"));
  });
  const { state } = await runEpisode(record(), models(happyPolicy(), judge), {
    hash: sha256,
    judge: { votes: 3 },
    judgeConcurrency: 1,
  });
  assert.equal(state.end?.reason, "gate-failed");
  assert.equal(judge.requests.length, 2 * 3 * 3);
  assert.deepEqual(state.turns[0]!.sat[0], [[true, true, false], [true, true, false]]);
  const even = await runEpisode(
    record(),
    models(happyPolicy(), fake("judge", (_r, i) => verdict(i % 2 === 0))),
    {
      hash: sha256,
      judge: { votes: 2 },
      judgeConcurrency: 1,
    },
  );
  assert.deepEqual(even.state.turns[0]!.sat[0], [[false, false, false], [false, false, false]]);
});

Deno.test("itemsPerCall batches items of one step into one call with an array verdict", async () => {
  const judge = fake("judge", (req) => {
    const ids = [...req.messages[0]!.content.matchAll(/^## Criterion (\S+)$/gm)].map((m) => m[1]!);
    const verdicts = ids.map((id) => ({ item_id: id, answer: true })).reverse();
    return result(JSON.stringify({ verdicts: ids.length > 0 ? verdicts : undefined, answer: true }));
  });
  const { state } = await runEpisode(record(), models(happyPolicy(), judge), {
    hash: sha256,
    judge: { itemsPerCall: 2 },
  });
  assert.equal(state.end?.reason, "reply-complete");
  assert.equal(
    judge.requests.length,
    2 * 2 + 2 * 1,
    "turn 0: [C0,C1]+[C2] per step; turn 1: [C0,C1] per step",
  );
  assert.equal(judge.requests[0]!.jsonSchema?.name, "evaluation_verdicts");
});

Deno.test("incremental judging asks fewer cells and yields the same rewards as exhaustive judging", async () => {
  const decide = (p: string) => !p.includes("Reply confirms booking?") || p.includes("Booked, reference");
  const run = async (mode: "exhaustive" | "incremental") => {
    const judge = judgeBy(decide);
    const { state } = await runEpisode(record(), models(happyPolicy(), judge), {
      hash: sha256,
      judge: { mode },
    });
    return { state, calls: judge.requests.length };
  };
  const ex = await run("exhaustive");
  const inc = await run("incremental");
  assert.equal(ex.calls, 10);
  // turn 0: step 0 asks C0..C2; step 1 skips C0 (paid, nothing depends on it) but re-asks C1 (C2 depends on
  // it and has not paid: it reads C1's verdict before each step) and C2. turn 1: step 0 asks C0, C1; step 1
  // re-asks only the unpaid C1.
  assert.equal(inc.calls, 3 + 2 + 2 + 1);
  assert.equal(inc.state.metrics.judgeCellsSkipped, 2);
  assert.deepEqual(inc.state.turns.map((t) => t.by?.[0]), [["mmm", "smm"], ["mm", "sm"]]);
  assert.deepEqual(ex.state.turns.map((t) => t.by?.[0]), [["mmm", "mmm"], ["mm", "mm"]]);
  const checklist = record().checklists[0]!;
  for (const level of ["trajectory", "turn", "step"] as const) {
    assert.deepEqual(
      computeAdvantages({ checklist, episodes: [episodeVerdicts(inc.state)] }, { level, minGroupSupport: 0 })
        .episodes,
      computeAdvantages({ checklist, episodes: [episodeVerdicts(ex.state)] }, { level, minGroupSupport: 0 })
        .episodes,
    );
  }
});

Deno.test("checked items are answered by their program with no judge call; rewards equal a judge that agrees", async () => {
  const checked = record();
  const [c0, c1] = checked.checklists[0]![0]!;
  c0!.check = {
    v: 1,
    pass: { kind: "call", tool: "get_weather", equal: { city: { const: "paris" } }, loose: true },
  };
  c1!.check = { v: 1, pass: { kind: "call", tool: "get_weather", returns: "ok" } };
  checked.checklists[0]![1]![0]!.check = {
    v: 1,
    pass: { kind: "call", tool: "book_table", equal: { people: { const: 2 } } },
  };
  // A judge that answers the checked questions as the programs do (the call is made at step 0 and stays made).
  const agrees = (p: string) => {
    const called = (tool: string) => p.includes(`"name": "${tool}"`);
    if (p.includes("Weather call made?") || p.includes("Weather returned?")) return called("get_weather");
    if (p.includes("Booking call made?")) return called("book_table");
    return honestly(p);
  };
  for (const mode of ["exhaustive", "incremental"] as const) {
    const plainJudge = judgeBy(agrees);
    const plain = await runEpisode(record(), models(happyPolicy(), plainJudge), {
      hash: sha256,
      judge: { mode },
    });
    const checkedJudge = judgeBy(agrees);
    const run = await runEpisode(checked, models(happyPolicy(), checkedJudge), {
      hash: sha256,
      judge: { mode },
    });
    const asked = checkedJudge.requests.map((r) => r.messages[0]!.content);
    assert.ok(!asked.some((p) => /Weather call made\?|Weather returned\?|Booking call made\?/.test(p)), mode);
    assert.ok(checkedJudge.requests.length < plainJudge.requests.length, mode);
    // turn 0: C0, C1 at 2 steps; turn 1: C0 at 2 steps
    assert.equal(run.state.metrics.judgeCellsChecked, 6, mode);
    // C2 of turn 0 and C1 of turn 1 pay only at step 1, so incremental judging skips none of their cells
    assert.deepEqual(run.state.turns.map((t) => t.by?.[0]), [["ppm", "ppm"], ["pm", "pm"]], mode);
    for (const level of ["trajectory", "turn", "step"] as const) {
      const score = (s: EpisodeState, rec: TrajectoryRecord) =>
        computeAdvantages({ checklist: rec.checklists[0]!, episodes: [episodeVerdicts(s)] }, {
          level,
          minGroupSupport: 0,
        }).episodes;
      assert.deepEqual(score(run.state, checked), score(plain.state, record()), `${mode} ${level}`);
    }
  }
  // A policy that books for 3 fails the booking check, whatever a judge would have said.
  const wrongPolicy = fake("policy", [
    result("<think>\nlook\n</think>", [apiCall("get_weather", { city: "Paris" })]),
    result("<think>\nok\n</think>\n\nIt is 21 degrees."),
    result("", [apiCall("book_table", { restaurant: "Chez Nous", people: 3 })]),
    result("Booked, reference B-17."),
  ]);
  const simulator = fake(
    "simulator",
    () => result(JSON.stringify({ execution_result: { booking_id: "B-18" } })),
  );
  const wrong = await runEpisode(checked, models(wrongPolicy, judgeAll(true), simulator), { hash: sha256 });
  assert.deepEqual(wrong.state.turns[1]!.sat[0]!.map((row) => row[0]), [false, false]);
  assert.deepEqual(wrong.state.turns[1]!.by?.[0], ["pm", "pm"]);
});

Deno.test("with several variants the gate fails only when more than half of them fail", async () => {
  const rec = record(3);
  rec.checklists[1]![0]![2] = { ...rec.checklists[1]![0]![2]!, question: "Strict reply check?" };
  const judge = judgeBy((p) => !p.includes("Strict reply check?"));
  const one = await runEpisode(rec, models(happyPolicy(), judge), { hash: sha256, variants: 3 });
  assert.equal(one.state.end?.reason, "reply-complete");
  assert.deepEqual(one.state.turns[0]!.passed, [true, false, true]);
  rec.checklists[2]![0]![2] = { ...rec.checklists[2]![0]![2]!, question: "Strict reply check?" };
  const two = await runEpisode(
    rec,
    models(happyPolicy(), judgeBy((p) => !p.includes("Strict reply check?"))),
    {
      hash: sha256,
      variants: 3,
    },
  );
  assert.equal(two.state.end?.reason, "gate-failed");
  assert.deepEqual(episodeVerdicts(two.state, 1).turns[0]!.steps[0]!.sat, [true, true, false]);
});

Deno.test("the judge cache answers repeated (model, prompt, item, transcript) calls", async () => {
  const judgeCache: Record<string, boolean[]> = {};
  const first = await runEpisode(record(), models(happyPolicy(), judgeAll(true)), {
    hash: sha256,
    judgeCache,
  });
  assert.equal(Object.keys(judgeCache).length, 10);
  const judge = judgeAll(false);
  const second = await runEpisode(record(), models(happyPolicy(), judge), { hash: sha256, judgeCache });
  assert.equal(judge.requests.length, 0);
  assert.equal(second.judgeCacheHits, 10);
  assert.deepEqual(episodeVerdicts(second.state), episodeVerdicts(first.state));
});

/** Drive the transitions by hand, round-tripping the state through JSON between every step. */
async function driveThroughJson(
  rec: TrajectoryRecord,
  m: EpisodeModels,
  opts: EpisodeOptions,
): Promise<EpisodeState> {
  const store = (s: EpisodeState) => JSON.parse(JSON.stringify(s)) as EpisodeState;
  let state = store(startEpisode(rec, opts));
  let cache = emptyCache();
  for (let guard = 0; state.phase !== "done"; guard++) {
    assert.ok(guard < 100);
    if (state.phase === "policy") {
      state = store(applyPolicyResult(state, await m.policy.complete(policyRequest(state))));
    } else if (state.phase === "tools") {
      const index = episodeToolIndex(state);
      const results = [];
      for (const call of toolCallsToRun(state)) {
        const r = resolveToolCall(index, call, cache);
        if (r.kind === "simulate") {
          const parsed = parseSimulation(await m.simulator.complete(r.request));
          if (parsed.ok) cache = cachePut(cache, call, parsed.content);
          results.push(toolResultFromSimulation(call, parsed));
        } else results.push(toolResultFromResolution(call, r));
      }
      state = store(applyToolResults(state, results));
    } else {
      const tasks = judgeRoundRequests(state, { model: m.judge.model, hash: sha256 });
      assert.ok(JSON.stringify(tasks).length > 0);
      const verdicts = [];
      for (const t of tasks) verdicts.push(verdictFromResult(t, await m.judge.complete(t.request)));
      state = store(applyJudgement(state, verdicts));
    }
  }
  return state;
}

Deno.test("driving the transitions by hand through JSON gives the same episode as the engine (runEpisode)", async () => {
  for (const mode of ["exhaustive", "incremental"] as const) {
    const opts = { judge: { mode } };
    const manual = await driveThroughJson(record(), models(happyPolicy()), opts);
    const { state } = await runEpisode(record(), models(happyPolicy()), { ...opts, hash: sha256 });
    assert.deepEqual(manual, state);
  }
});

Deno.test("transitions refuse the wrong phase and incomplete verdicts", async () => {
  const s = startEpisode(record(), { judge: { skipAbsentFocus: false } });
  assert.throws(() => applyToolResults(s, []), /needs phase tools/);
  assert.throws(() => toolCallsToRun(s), /needs phase tools/);
  const t = applyPolicyResult(s, result("<think>\nok\n</think>\n\nHi"));
  assert.equal(t.phase, "judge");
  assert.throws(() => policyRequest(t), /needs phase policy/);
  assert.throws(() => applyJudgement(t, []), /verdicts for 0 cells, the round has 3/);
  const tasks = judgeRoundRequests(t, { model: "j", hash: sha256 });
  assert.deepEqual(tasks.map((k) => [k.step, k.items, k.itemIds, k.vote]), [
    [0, [0], ["C0"], 0],
    [0, [1], ["C1"], 0],
    [0, [2], ["C2"], 0],
  ]);
  assert.equal(new Set(tasks.map((k) => k.key)).size, 3);
  const verdicts = await Promise.all(
    tasks.map(async (k) => verdictFromResult(k, await judgeAll(true).complete(k.request))),
  );
  assert.throws(() => applyJudgement(t, verdicts.slice(0, 2)), /the round has 3/);
  const next = applyJudgement(t, verdicts);
  assert.equal(next.phase, "policy");
  assert.equal(next.messages.at(-1)!.content, "Book Chez Nous for 2.");
  assert.equal(s.messages.length, 2, "transitions do not change their input");
});

Deno.test("END_REASONS is the closed list of end reasons", () => {
  assert.deepEqual([...END_REASONS].sort(), [
    "format-error",
    "gate-failed",
    "judge-failure",
    "limit-context",
    "limit-response",
    "limit-steps",
    "limit-turns",
    "model-failure",
    "reply-complete",
    "simulator-failure",
    "tool-error",
    "unknown-tool",
  ]);
});

Deno.test("scoreGroups() turns a group's finished episodes into batch samples, rewards and the summary", async () => {
  const { scoreGroups } = await import("../../core/batch.ts");
  const good = (await runEpisode(record(), models(happyPolicy(), judgeAll(true)), { hash: sha256 })).state;
  const bad = (await runEpisode(record(), models(happyPolicy(), judgeAll(false)), { hash: sha256 })).state;
  const options = { preset: "fixed" as const, level: "trajectory" as const };
  const scored = scoreGroups([{
    taskIndex: 3,
    recordIndex: 0,
    episodes: [{ id: "e0", stateRef: "ref-0", state: good }, { id: "e1", stateRef: "ref-1", state: bad }],
  }], options);
  const adv = computeAdvantages(
    { checklist: good.record.checklists[0]!, episodes: [good, bad].map((s) => episodeVerdicts(s)) },
    options,
  );
  assert.deepEqual(scored.groups[0]!.episodes.map((e) => [e.state, e.reward]), [
    ["ref-0", adv.episodes[0]!.reward],
    ["ref-1", adv.episodes[1]!.reward],
  ]);
  assert.ok(adv.episodes[0]!.reward > adv.episodes[1]!.reward, "the judged-good episode earns more");
  assert.equal(scored.meanReward, (adv.episodes[0]!.reward + adv.episodes[1]!.reward) / 2);
  const kept = adv.episodes.filter((e) => !e.excluded).length;
  assert.equal(scored.samples.length, kept);
  assert.equal(scored.samples[0]!.groupId, "task-3");
  assert.equal(scored.samples[0]!.episodeId, "e0");
  assert.equal(scored.samples[0]!.messages.length, good.messages.length);
  assert.deepEqual(scored.samples[0]!.advantages, adv.episodes[0]!.advantages);
  assert.ok(scored.judgeCalls > 0 && scored.itemPassRate > 0 && scored.itemPassRate < 1);
});

Deno.test("a record's checklist variants are averaged: one all passed, one all failed gives reward 0.5", async () => {
  const { scoreGroups } = await import("../../core/batch.ts");
  const rec = record(2);
  rec.checklists[1] = rec.checklists[1]!.map((turn) =>
    turn.map((i) => ({ ...i, question: `${i.question} (v1)` }))
  );
  const judge = judgeBy((content) => !content.includes("(v1)") && honestly(content));
  const options = { preset: "fixed" as const, level: "trajectory" as const };
  const score = async (variants: number) => {
    const { state } = await runEpisode(rec, models(happyPolicy(), judge), { hash: sha256, variants });
    const scored = scoreGroups([{
      taskIndex: 0,
      recordIndex: 0,
      episodes: [{ id: "e", stateRef: "r", state }],
    }], options);
    return scored.groups[0]!.episodes[0]!.reward;
  };
  assert.equal(await score(1), 1);
  assert.equal(await score(2), 0.5);
});
