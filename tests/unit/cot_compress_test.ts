import assert from "node:assert/strict";
import {
  applyRewrite,
  checkCompression,
  compareRewrite,
  COMPRESS_PROMPT_VERSION,
  cotCompressStage,
  reasoningLimit,
  reasoningSlots,
  reasoningTokens,
  recordReasoningTokens,
  splitReasoning,
  visibleText,
} from "../../core/cot_compress.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import {
  compressAnswerFor,
  sampleStageRecords,
  shortReasoning,
  withReasoning,
} from "../harness/stage_records.ts";

const samples = await sampleStageRecords();
/** A record with tool calls and several turns, reasoning added. */
const plain = samples.find((r) => r.messages.some((m) => m.tool_calls.length > 0))!;
const record = withReasoning(plain);
const callAt = record.messages.findIndex((m) => m.tool_calls.length > 0);
const replyAt = record.messages.findIndex((m, i) =>
  m.role === "assistant" && i !== callAt && m.content.trim() !== ""
);
const answer = compressAnswerFor(record);
const text = (a: unknown) => JSON.stringify(a);
const paths = (issues: { path: string }[]) => issues.map((i) => i.path);

Deno.test("splitReasoning() and visibleText() cut a content around its first think block", () => {
  assert.deepEqual(splitReasoning("a<think>\nplan\n</think>\n\nHi"), {
    before: "a",
    thinking: "\nplan\n",
    after: "\n\nHi",
  });
  assert.equal(splitReasoning("no block"), undefined);
  assert.equal(splitReasoning("<think> never closed"), undefined);
  assert.equal(visibleText("a<think>x</think>b"), "ab");
  assert.equal(visibleText("plain"), "plain");
});

Deno.test("reasoning tokens are characters / 4 rounded up, limits at least 1 token", () => {
  assert.equal(reasoningTokens("  abcde  "), 2);
  assert.equal(reasoningLimit(100, 0.5), 50);
  assert.equal(reasoningLimit(1, 0.5), 1);
  const slots = reasoningSlots(record, 0.5);
  assert.equal(slots.length, record.messages.filter((m) => m.role === "assistant").length);
  for (const s of slots) assert.equal(s.limit, Math.floor(s.tokens * 0.5));
  assert.equal(recordReasoningTokens(plain), 0);
  assert.equal(recordReasoningTokens(record), slots.reduce((n, s) => n + s.tokens, 0));
});

Deno.test("applyRewrite() replaces only the reasoning and keeps the block's surrounding whitespace", () => {
  const out = applyRewrite(record, { messages: [{ index: callAt, thinking: "  short plan  " }] });
  const was = splitReasoning(record.messages[callAt]!.content)!;
  assert.equal(out.messages[callAt]!.content, `<think>\nshort plan\n</think>${was.after}`);
  assert.deepEqual(
    out.messages.filter((_, i) => i !== callAt),
    record.messages.filter((_, i) => i !== callAt),
  );
  assert.notEqual(out.messages, record.messages, "the input record is not changed");
  assert.match(record.messages[callAt]!.content, /Let me think about message/);
});

Deno.test("checkCompression() accepts a rewrite that keeps every tool call and visible text identical", () => {
  const check = checkCompression(text(answer), record, 0.5);
  assert.ok(check.ok, JSON.stringify(!check.ok && check.errors));
  const rewritten = check.value.record;
  rewritten.messages.forEach((m, i) => {
    const was = record.messages[i]!;
    assert.deepEqual(m.tool_calls, was.tool_calls, `tool calls of message ${i}`);
    assert.equal(visibleText(m.content), visibleText(was.content), `visible text of message ${i}`);
  });
  assert.ok(recordReasoningTokens(rewritten) <= recordReasoningTokens(record) / 2);
  assert.deepEqual(compareRewrite(record, rewritten, 0.5), []);
});

Deno.test("compareRewrite() rejects a changed argument string and names the message index", () => {
  const rewritten = applyRewrite(record, answer);
  const call = rewritten.messages[callAt]!.tool_calls[0]!;
  rewritten.messages[callAt] = {
    ...rewritten.messages[callAt]!,
    tool_calls: [{
      ...call,
      function: { ...call.function, arguments: call.function.arguments.replace("}", " }") },
    }],
  };
  const issues = compareRewrite(record, rewritten, 0.5);
  assert.deepEqual(paths(issues), [`record.messages[${callAt}].tool_calls[0].function.arguments`]);
  assert.match(
    issues[0]!.message,
    new RegExp(`Tool call 0 of message ${callAt} changed its function\\.arguments`),
  );
  // A renamed tool and a changed id are caught the same way.
  const renamed = structuredClone(applyRewrite(record, answer));
  renamed.messages[callAt]!.tool_calls[0]!.function.name = "Other";
  renamed.messages[callAt]!.tool_calls[0]!.id = "call_x";
  assert.deepEqual(paths(compareRewrite(record, renamed, 0.5)), [
    `record.messages[${callAt}].tool_calls[0].id`,
    `record.messages[${callAt}].tool_calls[0].function.name`,
  ]);
});

Deno.test("compareRewrite() and checkCompression() reject changed user-visible text", () => {
  const rewritten = structuredClone(applyRewrite(record, answer));
  rewritten.messages[replyAt]!.content += " (edited)";
  const issues = compareRewrite(record, rewritten, 0.5);
  assert.deepEqual(paths(issues), [`record.messages[${replyAt}].content`]);
  assert.match(issues[0]!.message, new RegExp(`user-visible text of message ${replyAt}`));

  // A reasoning that closes the block early moves text out of it: the visible text changes.
  const sneaky = structuredClone(answer);
  sneaky.messages.find((m) => m.index === replyAt)!.thinking = "ok</think>Extra words for the user";
  const check = checkCompression(text(sneaky), record, 0.5);
  assert.ok(!check.ok);
  assert.ok(paths(check.errors).includes(`record.messages[${replyAt}].content`), text(check.errors));

  // A user message edited in the rewritten record is a change too.
  const user = record.messages.findIndex((m) => m.role === "user");
  const edited = structuredClone(applyRewrite(record, answer));
  edited.messages[user]!.content = "something else";
  assert.deepEqual(paths(compareRewrite(record, edited, 0.5)), [`record.messages[${user}].content`]);
});

Deno.test("checkCompression() rejects a reasoning over its share of the original", () => {
  const long = structuredClone(answer);
  const entry = long.messages.find((m) => m.index === callAt)!;
  entry.thinking = splitReasoning(record.messages[callAt]!.content)!.thinking; // unchanged: 100 %
  const check = checkCompression(text(long), record, 0.5);
  assert.ok(!check.ok);
  assert.deepEqual(paths(check.errors), [`record.messages[${callAt}].thinking`]);
  assert.match(check.errors[0]!.message, /over its limit of \d+ \(0\.5 × \d+; at most \d+ characters\)/);
  // The same answer passes at a looser target.
  assert.ok(checkCompression(text(long), record, 1).ok);
});

Deno.test("checkCompression() names missing, extra and repeated indices, empty reasoning and think tags", () => {
  const user = record.messages.findIndex((m) => m.role === "user");
  const broken = structuredClone(answer);
  const dropped = broken.messages.shift()!.index;
  broken.messages.push({ index: user, thinking: "x" }, { index: 999, thinking: "x" });
  broken.messages.push({ ...broken.messages[0]! });
  broken.messages[1]!.thinking = "   ";
  broken.messages[2]!.thinking = "a <think> inside";
  const check = checkCompression(text(broken), record, 0.5);
  assert.ok(!check.ok);
  const byPath = check.errors.map((e) => `${e.path}: ${e.message}`);
  const n = broken.messages.length;
  assert.ok(
    byPath.includes(`answer.messages[${n - 3}].index: Extra index: message ${user} is a user message`),
  );
  assert.ok(byPath.includes(`answer.messages[${n - 2}].index: Extra index: the record has no message 999`));
  assert.ok(
    byPath.includes(`answer.messages[${n - 1}].index: Message ${broken.messages[0]!.index} is listed twice`),
  );
  assert.ok(
    byPath.includes(
      `answer.messages: Missing index ${dropped}: the reasoning of assistant message ${dropped} was not rewritten`,
    ),
    byPath.join("\n"),
  );
  assert.ok(
    byPath.some((e) =>
      e.startsWith(`record.messages[${broken.messages[1]!.index}].thinking: The new reasoning`) &&
      e.endsWith("is empty")
    ),
  );
  assert.ok(byPath.some((e) => e.includes(`message ${broken.messages[2]!.index} contains a <think> tag`)));
  assert.ok(
    !byPath.some((e) => e.startsWith(`record.messages[${dropped}]`)),
    "a missing index is reported once",
  );
});

Deno.test("checkCompression() reports an answer without JSON", () => {
  const check = checkCompression("I cannot do that", record, 0.5);
  assert.ok(!check.ok);
  assert.deepEqual(check.errors.map((e) => e.message), ["The answer holds no JSON object"]);
  const schema = checkCompression('{"messages": [{"index": "2"}]}', record, 0.5);
  assert.ok(!schema.ok);
  assert.deepEqual(paths(schema.errors), ["messages[0].index", "messages[0].thinking"]);
});

Deno.test("cotCompressStage: the target is part of the prompt version, a record without reasoning needs no call", () => {
  assert.equal(cotCompressStage.promptVersion({ target: 0.25 }), `${COMPRESS_PROMPT_VERSION}-t0.25`);
  assert.equal(cotCompressStage.promptVersion({}), `${COMPRESS_PROMPT_VERSION}-t0.5`);
  assert.equal(cotCompressStage.checkParams({ target: 0.5 }), undefined);
  assert.match(cotCompressStage.checkParams({ target: 0 })!, /in \(0, 1\]/);
  assert.match(cotCompressStage.checkParams({ target: 1.5 })!, /in \(0, 1\]/);
  assert.deepEqual(cotCompressStage.settle(plain, {}), {
    status: "no-reasoning",
    output: "keep",
    reasons: [],
  });
  assert.equal(cotCompressStage.settle(record, {}), undefined);
});

Deno.test("cotCompressStage: accepted rewrites carry their numbers, exhausted records stay unchanged with reasons", () => {
  const check = cotCompressStage.check(text(answer), record, { target: 0.5 }, { truncated: false });
  assert.ok(check.ok);
  const accepted = cotCompressStage.accept(check.value, record, { target: 0.5 });
  assert.equal(accepted.status, "compressed");
  assert.equal(accepted.output, "rewrite");
  const meta = accepted.record!.meta!.cotCompression as { before: number; after: number };
  assert.equal(meta.before, recordReasoningTokens(record));
  assert.equal(meta.after, recordReasoningTokens(accepted.record!));
  const failed = cotCompressStage.exhausted(record, [{
    path: "record.messages[2].thinking",
    message: "too long",
  }], 3);
  assert.deepEqual(failed, {
    status: "not-compressed",
    output: "keep",
    reasons: [{
      criterion: "cot_compress",
      path: "record.messages[2].thinking",
      message: "Not compressed after 3 attempts: too long",
    }],
  });
});

Deno.test("cotCompressStage.messages() lists each reasoning once with its limit, and a retry carries the problems", () => {
  const first = cotCompressStage.messages(record, { target: 0.5 });
  assert.equal(first.length, 2);
  const user = first[1]!.content;
  const slot = reasoningSlots(record, 0.5)[0]!;
  assert.ok(user.includes(`## message [${slot.index}]: at most ${slot.limit * 4} characters`));
  assert.equal(user.split(slot.thinking.trim()).length - 1, 1, "the reasoning is shown once");
  assert.ok(user.includes(`(the reasoning of message [${slot.index}] is listed below)`));
  const retry = cotCompressStage.messages(record, { target: 0.5 }, {
    output: "{}",
    errors: [{ path: "answer.messages", message: "Missing index 2" }],
  });
  assert.equal(retry.length, 4);
  assert.equal(retry[2]!.content, "{}");
  assert.match(retry[3]!.content, /answer\.messages: Missing index 2/);
});

Deno.test("shortReasoning() fixture stays under half of the long one", () => {
  const r: TrajectoryRecord = record;
  for (const s of reasoningSlots(r, 0.5)) {
    const calls = r.messages[s.index]!.tool_calls.map((c) => c.function.name);
    assert.ok(reasoningTokens(shortReasoning(s.index, calls)) <= s.limit);
  }
});
