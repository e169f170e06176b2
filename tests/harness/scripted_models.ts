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
import {
  judgeVerdict,
  type ParsedChatRequest,
  type ScriptedReply,
  type ScriptHandler,
} from "../scripted_server.ts";

/** The part of an Idempotency-Key that names the call within its run (`run/<name>/` stripped). */
function callIdentity(req: ParsedChatRequest): string {
  return (req.headers["idempotency-key"] ?? "").replace(/^run\/[^/]+\//, "");
}

function unitHash(text: string): number {
  return createHash("sha256").update(text).digest().readUInt32BE(0) / 2 ** 32;
}

/**
 * A policy that answers step k of a dialogue with the reference's k-th assistant message, except
 * that about one call in `deviateEvery` replies early instead. Whether a call deviates is a pure
 * function of its identity within the run (episode, step), so siblings differ from each other but
 * a rerun of the same run, or a retried call, gets the same answer.
 */
export function referencePolicy(
  records: readonly TrajectoryRecord[],
  opts: { deviateEvery?: number } = {},
): ScriptHandler {
  const byFirstUser = new Map<string, TrajectoryRecord>();
  for (const r of records) {
    const first = r.messages.find((m) => m.role === "user");
    if (first) byFirstUser.set(first.content, r);
  }
  return (req: ParsedChatRequest): ScriptedReply => {
    const first = req.messages.find((m) => m.role === "user");
    const record = byFirstUser.get(String(first?.content ?? ""));
    if (!record) return { content: "I cannot help with that." };
    const k = req.messages.filter((m) => m.role === "assistant").length;
    const ref = record.messages.filter((m) => m.role === "assistant")[k];
    if (!ref) return { content: "Done." };
    if (opts.deviateEvery && unitHash(callIdentity(req)) < 1 / opts.deviateEvery) {
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

/**
 * The scripted roles of the training tests, benchmarks and chaos runs: the reference policy (replying early about
 * one call in `deviateEvery`), a judge true with probability ≈ `pTrue`, and the echoing simulator.
 */
export function trainingRoles(
  records: readonly TrajectoryRecord[],
  opts: { deviateEvery?: number; pTrue?: number } = {},
): Record<string, ScriptHandler> {
  return {
    "policy-model": referencePolicy(records, { deviateEvery: opts.deviateEvery ?? 3 }),
    "judge-model": hashJudge(opts.pTrue ?? 0.7),
    "sim-model": echoSimulator(),
  };
}

/** A judge whose answer is a pure function of the prompt (true with probability ≈ `pTrue`). */
export function hashJudge(pTrue = 0.7): ScriptHandler {
  return (req: ParsedChatRequest): ScriptedReply => {
    const text = req.messages.map((m) => String(m.content ?? "")).join("\n");
    return { json: judgeVerdict(unitHash(text) < pTrue) };
  };
}

/** A simulator that returns a small JSON result naming the tool it was asked about. */
export function echoSimulator(): ScriptHandler {
  return (req: ParsedChatRequest): ScriptedReply => {
    const text = String(req.messages.at(-1)?.content ?? "");
    return { json: { analysis: "simulated", execution_result: { ok: true, chars: text.length } } };
  };
}
