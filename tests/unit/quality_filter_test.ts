import assert from "node:assert/strict";
import { jsonSchemaOf } from "../../llm/structured.ts";
import {
  FILTER_PROMPT_VERSION,
  LLM_FILTER_CRITERION,
  PROBLEM_KINDS,
  qualityFilterStage,
} from "../../core/quality_filter.ts";
import { readAnswer, renderDialogue, stageFeedback, userTurns } from "../../core/record_stage.ts";
import { QualityVerdictSchema } from "../../core/quality_filter.ts";
import { sampleStageRecords, withReasoning } from "../harness/stage_records.ts";

const record = (await sampleStageRecords()).find((r) => r.messages.some((m) => m.tool_calls.length > 0))!;
const turns = userTurns(record);
const check = (text: string) => qualityFilterStage.check(text, record, {}, { truncated: false });
const clean = { problems: [], keep: true };
const bad = {
  problems: [{ kind: "wrong_tool", turn: 0, message: "Message 2 calls the wrong tool" }],
  keep: false,
};

Deno.test("qualityFilterStage keeps a clean verdict and rejects a bad one with its problems as reasons", () => {
  const ok = check(JSON.stringify(clean));
  assert.ok(ok.ok);
  assert.deepEqual(qualityFilterStage.accept(ok.value, record, {}), {
    status: "kept",
    output: "keep",
    reasons: [],
    details: clean,
  });
  const no = check(JSON.stringify(bad));
  assert.ok(no.ok);
  const decision = qualityFilterStage.accept(no.value, record, {});
  assert.equal(decision.status, "rejected");
  assert.equal(decision.output, "drop");
  assert.deepEqual(decision.reasons, [{
    criterion: LLM_FILTER_CRITERION,
    path: "turn 0",
    message: "wrong_tool: Message 2 calls the wrong tool",
    kind: "wrong_tool",
    turn: 0,
  }]);
});

Deno.test("qualityFilterStage reads a verdict inside a fence or after prose, never one inside <think>", () => {
  assert.ok(check("```json\n" + JSON.stringify(clean) + "\n```").ok);
  assert.ok(check(`Here is my verdict: ${JSON.stringify(bad)}`).ok);
  const hidden = check(`<think>${JSON.stringify(clean)}</think>no verdict`);
  assert.ok(!hidden.ok);
});

Deno.test("qualityFilterStage names schema problems with their paths and values", () => {
  const r = check(JSON.stringify({ problems: [{ kind: "rude", turn: 0.5, message: "" }], keep: "no" }));
  assert.ok(!r.ok);
  assert.deepEqual(r.errors.map((e) => [e.path, e.value]), [
    ["problems[0].kind", "rude"],
    ["problems[0].turn", 0.5],
    ["problems[0].message", ""],
    ["keep", "no"],
  ]);
  const none = check("I think it is fine.");
  assert.ok(!none.ok);
  assert.deepEqual(none.errors.map((e) => e.message), ["The answer holds no JSON object"]);
  const empty = check("  ");
  assert.ok(!empty.ok);
  assert.equal(empty.errors[0]!.message, "The answer is empty, expected a JSON object");
  const cut = qualityFilterStage.check('{"problems": [', record, {}, { truncated: true });
  assert.ok(!cut.ok);
  assert.match(cut.errors[0]!.message, /cut by the token limit/);
});

Deno.test("qualityFilterStage rejects turns that do not exist and a rejection without a problem", () => {
  const r = check(JSON.stringify({ problems: [{ kind: "other", turn: turns, message: "x" }], keep: true }));
  assert.ok(!r.ok);
  assert.deepEqual(r.errors, [{
    path: "problems[0].turn",
    message: `The dialogue has user turns 0 to ${turns - 1}; turn ${turns} does not exist`,
    value: turns,
  }]);
  const silent = check(JSON.stringify({ problems: [], keep: false }));
  assert.ok(!silent.ok);
  assert.equal(silent.errors[0]!.path, "problems");
});

Deno.test("qualityFilterStage.exhausted() drops the record as unjudged, with the last problems", () => {
  const d = qualityFilterStage.exhausted(record, [{ path: "keep", message: "Invalid input" }], 3);
  assert.deepEqual(d, {
    status: "unjudged",
    output: "drop",
    reasons: [{
      criterion: LLM_FILTER_CRITERION,
      path: "(verdict) keep",
      message: "No valid verdict after 3 attempts: Invalid input",
    }],
  });
});

Deno.test("qualityFilterStage prompt: every criterion, the dialogue with indices and turns, a retry with feedback", () => {
  assert.equal(qualityFilterStage.promptVersion({}), FILTER_PROMPT_VERSION);
  const withThinking = withReasoning(record);
  const [system, user] = qualityFilterStage.messages(withThinking, {});
  for (const kind of PROBLEM_KINDS) assert.ok(system!.content.includes(`"${kind}"`), kind);
  const call = withThinking.messages.findIndex((m) => m.tool_calls.length > 0);
  const c = withThinking.messages[call]!.tool_calls[0]!;
  assert.ok(user!.content.includes(`→ tool call ${c.id}: ${c.function.name}(${c.function.arguments})`));
  assert.ok(user!.content.includes("Let me think about message"), "the judge sees the reasoning");
  assert.match(user!.content, /## \[1\] user · turn 0/);
  assert.ok(user!.content.includes(`between 0 and ${turns - 1}`));
  const retry = qualityFilterStage.messages(record, {}, {
    output: "nope",
    errors: [{ path: "(root)", message: "The answer holds no JSON object", value: "nope" }],
  });
  assert.equal(retry.length, 4);
  assert.deepEqual(retry.slice(2).map((m) => m.role), ["assistant", "user"]);
  assert.equal(retry[2]!.content, "nope");
  assert.equal(
    retry[3]!.content,
    stageFeedback(
      [{ path: "(root)", message: "The answer holds no JSON object", value: "nope" }],
      'Fix every problem and answer again with the whole JSON object {"problems": [...], "keep": ...}, nothing else.',
    ),
  );
  assert.match(
    retry[3]!.content,
    /^Your answer cannot be used: 1 problem\.\n- \(root\): The answer holds no JSON object/,
  );
});

Deno.test("the verdict's JSON schema names the problem kinds, and readAnswer() prefers the outer object", () => {
  const schema = JSON.stringify(jsonSchemaOf(QualityVerdictSchema));
  for (const kind of PROBLEM_KINDS) assert.ok(schema.includes(kind));
  const read = readAnswer(JSON.stringify(bad), QualityVerdictSchema, { truncated: false });
  assert.ok(read.ok);
  assert.equal(read.value.problems.length, 1);
  assert.ok(renderDialogue(record).startsWith(`# Tools (${record.tools.length})`));
});
