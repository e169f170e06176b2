/**
 * Checklist labeling (CM2 §1.3–1.4), pure: the labeler prompt, the rendering of a record for it,
 * the feedback message of a retry, and {@linkcode checkLabel}, which validates the labeler's output
 * rule by rule (every problem with its path and value) and applies the few repairs that cannot change
 * what a checklist means, counting each kind.
 *
 * Differences from the reference labeler, on purpose: messages are shown with their turn and step
 * numbers (so evidence pointers can be right), safe repairs are applied instead of rejecting, and a
 * retry shows the model its previous answer and the problems found (the reference retries blindly).
 *
 * @example Validate a reply
 * ```ts
 * const check = checkLabelText(result.content, record);
 * if (check.ok) record.checklists.push(check.variant);
 * else console.error(check.errors.map(formatLabelIssue).join("\n"));
 * ```
 *
 * @module
 */
import type { ChatMessage } from "./llm_types.ts";
import { EVIDENCE_FROM, FOCUS_ON, type Message, type ToolSchema, turnRanges } from "./records.ts";
import { formatLabelIssue, type LabelIssue } from "./label_check.ts";

export * from "./label_check.ts";

// ---------------------------------------------------------------------------------------------
// Prompt

/** The labeler's system prompt: the task, the rules and the output format, in our own words. */
export function labelingSystemPrompt(): string {
  return `You write evaluation checklists for dialogues in which an AI assistant uses tools to help a user.

You receive the tools the assistant could call and one reference dialogue. Every message carries its turn and step number. A turn starts at a user message and lasts until the next user message. Turns are numbered from 0. Inside a turn the user message is step 0 and each later message (assistant or tool) adds one.

The checklists will grade a different assistant that meets the same user messages in a fresh run. It will call tools in its own way and the tool results it sees may be simulated. A grader reads that new dialogue one assistant step at a time and answers each checklist item with yes or no. Write items that such a grader can decide.

For every user turn write a list of items that together capture what a good assistant must achieve in that turn, judged against what the reference did right. Rules for items:
1. Atomic: one item checks one thing. Split "looks up the flight and books it" into two items.
2. Binary and observable: the answer is plainly yes or no from what the assistant wrote or called, or what a tool returned. Never ask about intentions or quality in general.
3. Grounded: every item names evidence in the reference dialogue, at least one pointer with the turn, the step, which part of the message ("from") and a short verbatim snippet.
4. focus_on says where the grader must look: "assistant.tool_calls" (which tool was called with which arguments), "tool.content" (what a tool returned), "assistant.content.thinking" (reasoning inside <think>...</think>) or "assistant.content.user_visible_reply" (what the user is told). Never the user's own text.
5. Write the question, pass condition and failure examples without any turn number or step number. The dialogue being graded is numbered differently, so say "the call that creates the event", not "the call in step 3".
6. Accept other correct ways. A pass condition states the outcome that matters: equivalent argument values, a different order of independent calls, extra harmless calls, other wording of a reply. Only demand an exact value where the task needs that exact value.
7. failure_examples lists concrete, realistic ways to fail the item.
8. required_for_next_turn is true only for items without which the dialogue cannot sensibly continue (for example, the booking the user asked for was never made). Keep it false for nice-to-have items.
9. Dependencies: an item may depend on items of the same turn whose focus_on is "tool.content", when it is only meaningful once that tool result exists (a reply that reports a found reservation depends on the item checking that the search returned it). No other dependencies.
10. Weights: give every item a weight from 0 to 1 by how much it matters; the weights of one turn sum to exactly 1.
11. Ids: "C0", "C1", "C2", ... in order, starting again at "C0" in each turn.
12. Optional "check": when a program can decide an item exactly from the tool calls, tool results or reply text, add a check so no grader is needed. Only where it means the same as the pass condition; leave it out otherwise. Shape: {"v": 1, "pass": CONDITION}. A CONDITION is one of
   {"kind": "call", "tool": NAME, "args": JSON_SCHEMA, "equal": {"arg.path": VALUE}, "loose": true, "returns": "ok"} (a call to NAME; args, equal and returns optional; loose: compare text ignoring case and spacing; returns "ok": its result is not an error),
   {"kind": "no_call", "tool": NAME},
   {"kind": "reply", "contains": [VALUE], "matches": REGEX, "loose": true},
   {"kind": "all" | "any", "of": [CONDITION, ...]}, {"kind": "not", "of": CONDITION}.
   A VALUE is {"const": JSON} or {"from_result": {"tool": NAME, "path": "field.0.id"}} (a value an earlier result of NAME returned).

Answer with a JSON array and nothing else: one object per user turn, in turn order, shaped like
[
  {
    "turn": 0,
    "checklist": [
      {
        "id": "C0",
        "evidence": [{"turn": 0, "step": 1, "from": "assistant.tool_calls", "snippet": "..."}],
        "focus_on": "assistant.tool_calls",
        "question": "...",
        "pass_condition": "...",
        "failure_examples": ["...", "..."],
        "required_for_next_turn": true
      }
    ],
    "dependence": {"C0": []},
    "weight": {"C0": 1.0}
  }
]
"from" is one of ${EVIDENCE_FROM.map((f) => `"${f}"`).join(", ")}.
"focus_on" is one of ${FOCUS_ON.map((f) => `"${f}"`).join(", ")}.
"dependence" and "weight" each have exactly one entry per item id of the turn.`;
}

interface RenderedMessage {
  turn: number;
  step: number;
  role: Message["role"];
  content: string;
  tool_calls?: { name: string; arguments: unknown }[];
}

function decodeArgs(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The dialogue as the labeler sees it: the tools, then every message with its turn and step. */
export function renderLabelingInput(
  record: { tools: readonly ToolSchema[]; messages: readonly Message[] },
): string {
  const ranges = turnRanges(record.messages);
  const rendered: RenderedMessage[] = [];
  ranges.forEach(({ start, end }, turn) => {
    for (let i = start; i < end; i++) {
      const m = record.messages[i]!;
      const r: RenderedMessage = { turn, step: i - start, role: m.role, content: m.content };
      if (m.tool_calls.length > 0) {
        r.tool_calls = m.tool_calls.map((c) => ({
          name: c.function.name,
          arguments: decodeArgs(c.function.arguments),
        }));
      }
      rendered.push(r);
    }
  });
  const system = record.messages[0]?.role === "system" ? record.messages[0].content : undefined;
  const parts = [
    `# Tools\n${JSON.stringify(record.tools.map((t) => t.function), null, 2)}`,
    ...(system !== undefined ? [`# System prompt of the assistant\n${system}`] : []),
    `# Dialogue (${ranges.length} user turn${ranges.length === 1 ? "" : "s"})\n${
      JSON.stringify(rendered, null, 2)
    }`,
    `Write the checklist JSON array now: exactly ${ranges.length} block${
      ranges.length === 1 ? "" : "s"
    }, turn 0 to ${ranges.length - 1}.`,
  ];
  return parts.join("\n\n");
}

/** A failed earlier attempt, shown to the labeler on the next try. */
export interface PriorAttempt {
  /** The labeler's answer, verbatim. */
  output: string;
  /** What was wrong with it. */
  errors: LabelIssue[];
}

/** Most problems listed in one feedback message. */
export const MAX_FEEDBACK_ISSUES = 25;
/** Most characters of an earlier answer sent back with the feedback. */
export const MAX_ECHOED_OUTPUT = 40_000;

/** The user message of a retry: every problem found, then what to do. */
export function feedbackMessage(errors: readonly LabelIssue[]): string {
  const shown = errors.slice(0, MAX_FEEDBACK_ISSUES).map((e) => `- ${formatLabelIssue(e)}`);
  const more = errors.length - shown.length;
  return [
    `Your answer cannot be used yet. ${errors.length} problem${errors.length === 1 ? "" : "s"} found:`,
    ...shown,
    ...(more > 0 ? [`- and ${more} more of the same kinds`] : []),
    "",
    "Fix every problem and answer again with the complete JSON array (all turns), nothing else.",
  ].join("\n");
}

/**
 * The messages of one labeling call: system prompt and dialogue, plus, on a retry, the previous
 * answer and the problems found in it.
 */
export function labelingMessages(
  record: { tools: readonly ToolSchema[]; messages: readonly Message[] },
  prior?: PriorAttempt,
): ChatMessage[] {
  const messages: ChatMessage[] = [
    { role: "system", content: labelingSystemPrompt() },
    { role: "user", content: renderLabelingInput(record) },
  ];
  if (prior) {
    const echoed = prior.output.length > MAX_ECHOED_OUTPUT
      ? `${prior.output.slice(0, MAX_ECHOED_OUTPUT)}\n[… answer cut here]`
      : prior.output;
    messages.push({ role: "assistant", content: echoed === "" ? "(empty answer)" : echoed });
    messages.push({ role: "user", content: feedbackMessage(prior.errors) });
  }
  return messages;
}
