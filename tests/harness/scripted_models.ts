/**
 * Scripted model roles for training-run tests, on top of the scripted server TEST DOUBLE: a
 * policy that replays the reference trajectory of whichever record it is given (so tool calls hit
 * the simulator's exact replay), a deterministic judge (a verdict that is a pure function of the
 * prompt, so two runs with the same seed get the same rewards), and a simulator.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { TrajectoryRecord } from "../../core/records.ts";
import { judgeVerdict, type ParsedChatRequest, type ScriptedReply, type ScriptHandler } from "../scripted_server.ts";

/** A policy that answers step k of a dialogue with the reference's k-th assistant message. */
export function referencePolicy(records: readonly TrajectoryRecord[], opts: { deviateEvery?: number } = {}): ScriptHandler {
  const byFirstUser = new Map<string, TrajectoryRecord>();
  for (const r of records) {
    const first = r.messages.find((m) => m.role === "user");
    if (first) byFirstUser.set(first.content, r);
  }
  return (req: ParsedChatRequest, callIndex: number): ScriptedReply => {
    const first = req.messages.find((m) => m.role === "user");
    const record = byFirstUser.get(String(first?.content ?? ""));
    if (!record) return { content: "I cannot help with that." };
    const k = req.messages.filter((m) => m.role === "assistant").length;
    const ref = record.messages.filter((m) => m.role === "assistant")[k];
    if (!ref) return { content: "Done." };
    if (opts.deviateEvery && callIndex % opts.deviateEvery === opts.deviateEvery - 1) {
      return { content: "Let me know if there is anything else." };
    }
    if (ref.tool_calls.length > 0) {
      return {
        toolCalls: ref.tool_calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments })),
        content: ref.content,
      };
    }
    return { content: ref.content };
  };
}

/** A judge whose answer is a pure function of the prompt (true with probability ≈ `pTrue`). */
export function hashJudge(pTrue = 0.7): ScriptHandler {
  return (req: ParsedChatRequest): ScriptedReply => {
    const text = req.messages.map((m) => String(m.content ?? "")).join("\n");
    const h = createHash("sha256").update(text).digest();
    return { json: judgeVerdict(h.readUInt32BE(0) / 2 ** 32 < pTrue) };
  };
}

/** A simulator that returns a small JSON result naming the tool it was asked about. */
export function echoSimulator(): ScriptHandler {
  return (req: ParsedChatRequest): ScriptedReply => {
    const text = String(req.messages.at(-1)?.content ?? "");
    return { json: { analysis: "simulated", execution_result: { ok: true, chars: text.length } } };
  };
}
