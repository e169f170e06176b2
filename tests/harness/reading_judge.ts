/**
 * TEST DOUBLE — in-process scripted models for the judge benchmark (`tests/bench/judge.ts`) and its test. Not
 * models: every answer comes from a script.
 *
 * - {@linkcode readingJudge}: a judge that *reads the judge prompt* as cm2 renders it (the criterion's question
 *   and pass condition, and the "Current Messages to Evaluate" transcript) and decides the rule checklist's three
 *   kinds of item the way a careful grader would: a call item by the calls it sees (argument values compared
 *   ignoring case and spacing, free text by word overlap), a tool-result item by whether that call returned a
 *   non-error result, a reply item by word overlap with the reference reply. It
 *   never sees an item's program check, so where it disagrees with one, the check says something else than
 *   the item's text.
 * - {@linkcode perturbedPolicy}: replays a record's reference trajectory with one seeded kind of mistake per
 *   episode (none, other letter case, a wrong argument, a skipped call, an early stop, a vague reply).
 * - {@linkcode echoingSimulator}: a tool simulator that answers every call with the same small result.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ChatModel, ChatRequest, ChatResult, ChatToolCall } from "../../core/llm_types.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import { JUDGE_CALL_END, JUDGE_CALL_START } from "../../core/transcript.ts";

const usage = { promptTokens: 0, completionTokens: 0, latencyMs: 0 };
const answer = (content: string, toolCalls: ChatToolCall[] = []): ChatResult => ({
  content,
  toolCalls,
  finishReason: toolCalls.length ? "tool_calls" : "stop",
  usage,
  model: "scripted",
});

/** A scripted chat model that counts its calls. */
export interface CountingModel extends ChatModel {
  calls: number;
}

function model(role: ChatModel["role"], answerOf: (req: ChatRequest) => ChatResult): CountingModel {
  const m: CountingModel = {
    role,
    model: `scripted-${role}`,
    calls: 0,
    complete(req) {
      m.calls++;
      return Promise.resolve(answerOf(req));
    },
  };
  return m;
}

const norm = (s: string) => s.normalize("NFKC").toLowerCase().replace(/\s+/g, " ").trim();
const words = (s: string) => new Set(norm(s).replace(/[^\p{L}\p{N} ]+/gu, " ").split(" ").filter(Boolean));

function overlap(a: string, b: string): number {
  const x = words(a);
  const y = words(b);
  if (x.size === 0 || y.size === 0) return 0;
  let both = 0;
  for (const w of x) if (y.has(w)) both++;
  return both / Math.max(x.size, y.size);
}

/** Argument values as a careful grader compares them: text ignoring case and spacing, free text by overlap. */
function sameValue(got: unknown, want: unknown): boolean {
  if (typeof want === "string" && want.trim().split(/\s+/).length > 5) {
    return typeof got === "string" && overlap(got, want) >= 0.6;
  }
  if (typeof want === "string" || typeof want === "number") {
    return (typeof got === "string" || typeof got === "number") && norm(String(got)) === norm(String(want));
  }
  return JSON.stringify(got) === JSON.stringify(want);
}

interface Seen {
  calls: { name: string; args: unknown; result?: string }[];
  replies: string[];
}

/** The calls (each with the tool message after it) and replies of a rendered "current" transcript. */
function readTranscript(current: string): Seen {
  const seen: Seen = { calls: [], replies: [] };
  const blocks = current.split(/^## Step: \d+\n/m).slice(1);
  for (const block of blocks) {
    const thinking = /^Role: assistant\ncontent\.thinking: ([\s\S]*?)\ncontent\.user_visible_reply: /m.exec(
      block,
    );
    const reply = /\ncontent\.user_visible_reply: ([\s\S]*?)\ntool_call: /.exec(block)?.[1] ?? "None";
    const toolCall = /\ntool_call: ([\s\S]*?)(?:\nRole: tool\n|$)/.exec(block)?.[1] ?? "None";
    const results = [...block.matchAll(/\nRole: tool\ncontent: ([\s\S]*?)(?=\nRole: tool\n|\n$|$)/g)].map((
      m,
    ) => m[1]!);
    if (toolCall.trim() !== "None") {
      const re = new RegExp(`${escape(JUDGE_CALL_START)}\\n([\\s\\S]*?)\\n${escape(JUDGE_CALL_END)}`, "g");
      [...toolCall.matchAll(re)].forEach((m, k) => {
        try {
          const call = JSON.parse(m[1]!) as { name: string; arguments: unknown };
          seen.calls.push({
            name: call.name,
            args: call.arguments,
            ...(results[k] !== undefined ? { result: results[k] } : {}),
          });
        } catch { /* a malformed call counts as not made */ }
      });
    } else {
      const text = reply.trim() !== "None" ? reply : thinking?.[1] ?? "";
      if (text.trim()) seen.replies.push(text.trim());
    }
  }
  return seen;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function isError(content: string): boolean {
  try {
    const v = JSON.parse(content);
    if (v && typeof v === "object" && !Array.isArray(v)) return "error" in v || "error_tool_call" in v;
  } catch { /* text */ }
  return /^\s*error\b/i.test(content);
}

function parsedArgs(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Whether a call's arguments match the reference's: every reference argument, compared as a grader would. */
function matches(got: unknown, want: unknown): boolean {
  if (!want || typeof want !== "object" || Array.isArray(want)) {
    return JSON.stringify(got) === JSON.stringify(want);
  }
  const args = (got ?? {}) as Record<string, unknown>;
  return Object.entries(want as Record<string, unknown>).every(([k, v]) => sameValue(args[k], v));
}

/** The verdict of one criterion of a judge prompt (see the module doc). */
export function readVerdict(prompt: string, criterion: string): boolean {
  const current =
    prompt.split("# Current Messages to Evaluate\n")[1]?.split("\n# Rules about tool calls")[0] ?? "";
  const seen = readTranscript(current);
  const question = /\*\*Question:\*\* (.*)/.exec(criterion)?.[1] ?? "";
  const pass = /\*\*Pass condition:\*\* ([\s\S]*?)\n\*\*Failure examples/.exec(criterion)?.[1] ?? "";
  const call = /^Does the assistant call (\S+) with arguments matching ([\s\S]*)\?$/.exec(question);
  if (call) {
    const want = parsedArgs(call[2]!);
    return seen.calls.some((c) => c.name === call[1] && matches(c.args, want));
  }
  const result = /^Does the (\S+) call with arguments matching ([\s\S]*) return a successful result\?$/.exec(
    question,
  );
  if (result) {
    const want = parsedArgs(result[2]!);
    return seen.calls.some((c) =>
      c.name === result[1] && matches(c.args, want) && c.result !== undefined && !isError(c.result)
    );
  }
  if (question.startsWith("Does the assistant's reply to the user convey")) {
    const reference = /reference reply: "([\s\S]*)"$/.exec(pass)?.[1] ?? "";
    const last = seen.replies.at(-1);
    return last !== undefined && (norm(last) === norm(reference) || overlap(last, reference) >= 0.6);
  }
  return false;
}

/** The reading judge (see the module doc): one verdict per criterion of the request, in order. */
export function readingJudge(): CountingModel {
  return model("judge", (req) => {
    const prompt = req.messages[0]!.content;
    const criteria = prompt.split(/^## Criterion \S+\n/m).slice(1);
    if (criteria.length === 0) {
      const one = prompt.split("# Criteria\n")[1] ?? "";
      return answer(JSON.stringify({ answer: readVerdict(prompt, one) }));
    }
    const ids = [...prompt.matchAll(/^## Criterion (\S+)\n/gm)].map((m) => m[1]!);
    return answer(JSON.stringify({
      verdicts: criteria.map((c, k) => ({ item_id: ids[k], answer: readVerdict(prompt, c) })),
    }));
  });
}

/** A simulator that answers every call with the same small result. */
export function echoingSimulator(): CountingModel {
  return model("simulator", () => answer(JSON.stringify({ execution_result: { status: "done" } })));
}

/** The kinds of mistake {@linkcode perturbedPolicy} makes, one per episode index (mod the count). */
export const MISTAKES = [
  "none",
  "letter-case",
  "wrong-argument",
  "skip-call",
  "stop-early",
  "vague-reply",
] as const;

function unit(text: string): number {
  return createHash("sha256").update(text).digest().readUInt32BE(0) / 2 ** 32;
}

/**
 * A policy that replays `record`'s reference trajectory, turn by turn, with the mistake of episode `episode`
 * (see {@linkcode MISTAKES}) at a seeded turn.
 */
export function perturbedPolicy(record: TrajectoryRecord, episode: number): CountingModel {
  const mistake = MISTAKES[episode % MISTAKES.length]!;
  const turns: TrajectoryRecord["messages"][] = [];
  for (const m of record.messages) {
    if (m.role === "user") turns.push([]);
    else if (m.role === "assistant" && turns.length) turns.at(-1)!.push(m);
  }
  const at = Math.floor(unit(`${record.uuid}/${episode}`) * turns.length);
  return model("policy", (req) => {
    const t = req.messages.filter((m) => m.role === "user").length - 1;
    const lastUser = req.messages.map((m) => m.role).lastIndexOf("user");
    const k = req.messages.slice(lastUser).filter((m) => m.role === "assistant").length;
    const steps = turns[t] ?? [];
    let step = k;
    if (t === at && mistake === "skip-call" && steps[0]?.tool_calls.length) step = k + 1;
    const ref = steps[step];
    if (!ref) return answer("Done.");
    if (t === at && mistake === "stop-early" && k === 0 && ref.tool_calls.length) {
      return answer("Let me know if there is anything else.");
    }
    if (ref.tool_calls.length === 0) {
      return answer(t === at && mistake === "vague-reply" ? "Okay, all done here." : ref.content);
    }
    const calls = ref.tool_calls.map((c, n): ChatToolCall => {
      let args = c.function.arguments;
      if (t === at && n === 0 && (mistake === "letter-case" || mistake === "wrong-argument")) {
        try {
          const obj = JSON.parse(args) as Record<string, unknown>;
          const key = Object.keys(obj).find((x) => typeof obj[x] === "string");
          if (key) {
            const v = obj[key] as string;
            obj[key] = mistake === "letter-case" ? v.toUpperCase() : `${v}-other`;
            args = JSON.stringify(obj);
          }
        } catch { /* keep */ }
      }
      return { id: c.id, type: "function", function: { name: c.function.name, arguments: args } };
    });
    return answer(ref.content, calls);
  });
}
