/**
 * The LLM quality filter of CM2's data pipeline (`cm2 data filter --llm`), pure: a strong model judges
 * each record on the paper's criteria (wrong tool use, arguments not grounded in the context,
 * hallucinated tool results, reasoning that contradicts the actions, answers that ignore the user) and
 * returns a structured verdict, {@linkcode QualityVerdictSchema}. A record with `keep: false` is rejected
 * with its problems as reasons; one whose answers never pass the checks is dropped as `unjudged`.
 *
 * @example Check a verdict by hand
 * ```ts
 * const check = qualityFilterStage.check(reply, record, {}, { truncated: false });
 * if (check.ok && !check.value.keep) console.log(check.value.problems);
 * ```
 *
 * @module
 */
import { z } from "zod";
import type { TrajectoryRecord } from "./records.ts";
import {
  readAnswer,
  type RecordStage,
  renderDialogue,
  stageConversation,
  type StageDecision,
  type StageIssue,
  type StageReason,
  userTurns,
} from "./record_stage.ts";

/**
 * Version of the filter prompt and checks; part of every stored verdict's key, so editing the prompt or
 * the rules means a new version (old verdicts stay under the old one).
 */
export const FILTER_PROMPT_VERSION = "cm2-filter-v1";

/** The kinds of problem the judge reports. */
export const PROBLEM_KINDS = [
  "wrong_tool",
  "ungrounded_argument",
  "hallucinated_result",
  "reasoning_contradicts_action",
  "ignores_user",
  "other",
] as const;

/** One problem the judge found: its kind, the user turn (0-based) and one sentence. */
export const QualityProblemSchema = z.object({
  kind: z.enum(PROBLEM_KINDS),
  turn: z.number().int(),
  message: z.string().min(1),
});

/** The judge's verdict on one record. */
export const QualityVerdictSchema = z.object({
  problems: z.array(QualityProblemSchema),
  keep: z.boolean(),
});

export type QualityProblem = z.infer<typeof QualityProblemSchema>;
export type QualityVerdict = z.infer<typeof QualityVerdictSchema>;

/** The `criterion` of every reason the LLM filter gives (the rule filter names its seven criteria). */
export const LLM_FILTER_CRITERION = "llm_quality";

/** The judge's system prompt, in our own words. */
export function qualityFilterSystemPrompt(): string {
  return `You review recorded dialogues in which an AI assistant helps a user by calling tools. Good records become training examples for other assistants, so only records in which the assistant behaves correctly may be kept.

You receive the tools the assistant could call and every message of the dialogue. Each message is headed by its index, its user turn (turns are counted from 0, starting at the first user message) and its role. Assistant reasoning, when present, is inside <think>...</think>. The tool calls of an assistant message follow it, each with its id, the tool name and the argument string.

Look for these problems; each has a kind:
- "wrong_tool": the assistant calls a tool that does not serve the request while an offered tool would, calls a tool that is not offered, or leaves out a call the request needs.
- "ungrounded_argument": an argument value comes from nowhere: the user did not say it, no tool returned it, the system prompt does not hold it, and it cannot be worked out from them (an invented id, date, name or amount).
- "hallucinated_result": the assistant states a result that no tool returned, or reports a tool result differently from what the tool returned.
- "reasoning_contradicts_action": the reasoning plans one thing and the assistant does another (another tool, other arguments, another answer), or acts on a conclusion the tool results do not support.
- "ignores_user": a reply that does not answer what the user asked in that turn, disregards a constraint the user set, or claims a success the user did not get.
- "other": any other error that makes the record a bad example (for example a reply that contradicts itself).

Report each problem once, with the user turn where it happens and one sentence that names the message index and what is wrong. Style, length and wording are not problems. A tool error that the assistant handles sensibly is not a problem.

Set "keep" to true when the assistant is a good example to learn from, to false when any problem above is real. With "keep": false list at least one problem.

Answer with one JSON object and nothing else, shaped like
{"problems": [{"kind": "wrong_tool", "turn": 0, "message": "Message 3 calls ... although the user asked for ..."}], "keep": false}
An empty "problems" list with "keep": true means the record is clean.`;
}

const RETRY_INSTRUCTION =
  'Fix every problem and answer again with the whole JSON object {"problems": [...], "keep": ...}, nothing else.';

/** The user message of a filter call: the record, then what to answer. */
export function qualityFilterInput(record: TrajectoryRecord): string {
  const turns = userTurns(record);
  return `${renderDialogue(record)}\n\nJudge this dialogue now. It has ${turns} user turn${
    turns === 1 ? "" : "s"
  }, so every "turn" you report is between 0 and ${Math.max(0, turns - 1)}.`;
}

/** Problems of a verdict that its schema cannot see: turn numbers, and a rejection without a reason. */
export function checkVerdict(verdict: QualityVerdict, record: TrajectoryRecord): StageIssue[] {
  const turns = userTurns(record);
  const issues: StageIssue[] = [];
  verdict.problems.forEach((p, i) => {
    if (p.turn < 0 || p.turn >= turns) {
      issues.push({
        path: `problems[${i}].turn`,
        message: `The dialogue has user turns 0 to ${turns - 1}; turn ${p.turn} does not exist`,
        value: p.turn,
      });
    }
  });
  if (!verdict.keep && verdict.problems.length === 0) {
    issues.push({
      path: "problems",
      message: 'A record with "keep": false needs at least one problem saying why',
      value: [],
    });
  }
  return issues;
}

/** A problem as a rejection reason (the line format of `data filter --rejected`). */
export function problemReason(p: QualityProblem): StageReason {
  return {
    criterion: LLM_FILTER_CRITERION,
    path: `turn ${p.turn}`,
    message: `${p.kind}: ${p.message}`,
    kind: p.kind,
    turn: p.turn,
  };
}

/** The LLM quality filter as a record stage (see the module doc). */
export const qualityFilterStage: RecordStage<QualityVerdict> = {
  kind: "filter",
  step: "filter-llm",
  withoutResult: "drop",
  statuses: ["kept", "rejected", "unjudged"],
  schemaName: "record_quality_verdict",
  responseSchema: QualityVerdictSchema,
  promptVersion: () => FILTER_PROMPT_VERSION,
  checkParams: () => undefined,
  settle: () => undefined,
  messages(record, _params, prior) {
    return stageConversation(
      qualityFilterSystemPrompt(),
      qualityFilterInput(record),
      prior && { prior, instruction: RETRY_INSTRUCTION },
    );
  },
  check(text, record, _params, opts) {
    const read = readAnswer(text, QualityVerdictSchema, opts);
    if (!read.ok) return read;
    const issues = checkVerdict(read.value, record);
    return issues.length > 0 ? { ok: false, errors: issues } : read;
  },
  accept(verdict): StageDecision {
    return verdict.keep ? { status: "kept", output: "keep", reasons: [], details: verdict } : {
      status: "rejected",
      output: "drop",
      reasons: verdict.problems.map(problemReason),
      details: verdict,
    };
  },
  exhausted(_record, errors, attempts): StageDecision {
    const head = `No valid verdict after ${attempts} attempt${attempts === 1 ? "" : "s"}`;
    return {
      status: "unjudged",
      output: "drop",
      reasons: (errors.length > 0 ? errors : [{ path: "(root)", message: "no answer" }]).map((e) => ({
        criterion: LLM_FILTER_CRITERION,
        path: `(verdict) ${e.path}`,
        message: `${head}: ${e.message}`,
      })),
    };
  },
};
