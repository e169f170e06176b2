/**
 * TEST DOUBLE helper — model faults for the chaos run: wraps the scripted server's role handlers so that a share of
 * calls fail the way real endpoints do. Which call fails, and how, is a pure function of the call's idempotency key
 * with the run name taken out (`run/<name>/…` → `run/*\/…`), so an undisturbed run and a chaos run with the same
 * seed meet the same faults.
 *
 * - Transient faults (429 with Retry-After, 500, a connection reset, a timeout past the client's, a truncated
 *   body, a body that is not JSON) hit only the first time a key is sent; the retry succeeds. The activity records
 *   each one before it rethrows (`activities/episode.ts`), so the iteration metrics count it apart from kills.
 * - Content faults hit every time the key is sent, since they are what the model says: a policy tool call with
 *   arguments that are not JSON. The episode ends with `format-error`, a reason in the metrics.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ParsedChatRequest, ScriptedReply, ScriptHandler } from "../scripted_server.ts";

/** The transient kinds, in the order the picker uses. */
export const TRANSIENT_FAULTS = [
  "429",
  "500",
  "reset",
  "timeout",
  "truncated-body",
  "malformed-body",
] as const;

/** One injected fault. */
export interface InjectedFault {
  key: string;
  role: string;
  kind: (typeof TRANSIENT_FAULTS)[number] | "invalid-arguments";
  /** When the server answered. */
  at: number;
}

function unit(text: string): number {
  return parseInt(createHash("sha256").update(text).digest("hex").slice(0, 12), 16) / 2 ** 48;
}

/** The key with the run's name taken out, so two runs of one script compare. */
export function normalisedKey(key: string): string {
  return key.replace(/^run\/[^/]+\//, "run/*/");
}

/**
 * Wraps `roles` so that about `rate` of the calls fail. Returns the wrapped roles and the list of faults injected
 * so far (per role: the policy also gets content faults).
 */
export function withFaults(
  roles: Record<string, ScriptHandler>,
  opts: { rate: number; seed: number; timeoutMs: number },
): { roles: Record<string, ScriptHandler>; injected: InjectedFault[] } {
  const injected: InjectedFault[] = [];
  const seen = new Set<string>();
  const wrap =
    (role: string, inner: ScriptHandler): ScriptHandler => async (req: ParsedChatRequest, i: number) => {
      const key = req.headers["idempotency-key"] ?? "";
      const norm = normalisedKey(key);
      const first = !seen.has(key);
      seen.add(key);
      const reply = await inner(req, i);
      if (!key || unit(`${opts.seed}/${norm}`) >= opts.rate) return reply;
      const pick = unit(`${opts.seed}/kind/${norm}`);
      if (role === "policy-model" && pick < 0.25 && "toolCalls" in reply && reply.toolCalls.length > 0) {
        if (first) injected.push({ key, role, kind: "invalid-arguments", at: Date.now() });
        return { ...reply, toolCalls: [{ ...reply.toolCalls[0]!, arguments: '{"unterminated": ' }] };
      }
      if (!first) return reply;
      const kind =
        TRANSIENT_FAULTS[Math.floor(unit(`${opts.seed}/transient/${norm}`) * TRANSIENT_FAULTS.length)]!;
      injected.push({ key, role, kind, at: Date.now() });
      return faultReply(kind, opts.timeoutMs);
    };
  return {
    roles: Object.fromEntries(Object.entries(roles).map(([role, h]) => [role, wrap(role, h)])),
    injected,
  };
}

function faultReply(kind: (typeof TRANSIENT_FAULTS)[number], timeoutMs: number): ScriptedReply {
  switch (kind) {
    case "429":
      return { fault: "429", retryAfterS: 1 };
    case "500":
      return { fault: "500" };
    case "reset":
      return { fault: "reset" };
    case "timeout":
      return { fault: "timeout", delayMs: timeoutMs + 1_000 };
    case "truncated-body":
      return {
        fault: "body",
        body: '{"id":"chatcmpl-x","object":"chat.completion","choices":[{"index":0,"mess',
      };
    case "malformed-body":
      return { fault: "body", body: "<html>502 Bad Gateway</html>" };
  }
}
