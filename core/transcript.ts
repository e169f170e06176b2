/**
 * The judge's view of a dialogue (`cm2-reference.md` §4.2): each message becomes a small labelled block,
 * blocks are concatenated without separators.
 *
 * - system: `Role: system\ncontent: …\n`
 * - user: `# Turn: k\nRole: user\ncontent: …\n`, k counting user messages of the rendered list from 0
 *   (so a current turn rendered on its own is always `Turn: 0`, as in the reference)
 * - assistant: `## Step: j\nRole: assistant\ncontent.thinking: T\ncontent.user_visible_reply: R\ntool_call: C\n`,
 *   j counting assistant messages since the last user message
 * - tool: `Role: tool\ncontent: …\n`
 *
 * T is the inside of the first `<think>…</think>`, unstripped; R the text after it, trimmed, or `None`.
 * Without a think block T is the whole content and R is `None`. C, in order of precedence:
 * 1. R holds a `<tool_call>` or `</tool_call>` tag (calls written in the text): C is R with the tags
 *    replaced by `<|tool_call_start|>` / `<|tool_call_end|>`, and R becomes `None` (the reference);
 * 2. the content holds such a tag elsewhere (no think block: the calls sit inside T): C is `None`, as in the
 *    reference, where the judge then sees the calls only inside the thinking;
 * 3. the message has structured `tool_calls` (cm2's API path): C is R (if not `None`) followed by one
 *    `<|tool_call_start|>\n{"name": …, "arguments": …}\n<|tool_call_end|>` block per call, joined by
 *    newlines, and R becomes `None`, so the judge sees API calls exactly as it sees text calls;
 * 4. otherwise `None`.
 *
 * Pure, no I/O.
 *
 * @module
 */
import { isJsonObject, pyJson } from "./canonical_json.ts";
import type { ChatMessage, ChatToolCall } from "./llm_types.ts";
import { TOOL_CALL_CLOSE, TOOL_CALL_OPEN } from "./tool_calls.ts";

/** Start marker of a tool call in the judge transcript. */
export const JUDGE_CALL_START = "<|tool_call_start|>";
/** End marker of a tool call in the judge transcript. */
export const JUDGE_CALL_END = "<|tool_call_end|>";
/** Placeholder for an empty field (Python's `None`). */
export const NONE = "None";

/** A message as the transcript needs it. */
export type TranscriptMessage = Pick<ChatMessage, "role" | "content"> & {
  tool_calls?: readonly ChatToolCall[] | null;
};

/** The three fields of an assistant step. */
export interface AssistantFields {
  thinking: string;
  reply: string;
  toolCall: string;
}

/**
 * Split an assistant message into thinking, user-visible reply and tool-call text (see the module doc).
 *
 * @example
 * ```ts
 * assistantFields({ role: "assistant", content: "<think>\nok\n</think>\n\nHi" });
 * // { thinking: "\nok\n", reply: "Hi", toolCall: "None" }
 * ```
 */
export function assistantFields(message: TranscriptMessage): AssistantFields {
  const content = message.content;
  const m = /<think>([\s\S]*?)<\/think>/.exec(content);
  let thinking: string;
  let reply: string;
  if (m) {
    thinking = m[1]!;
    // The text between the first and the second occurrence of `thinking + "</think>"` (Python's split()[1]).
    const sep = thinking + "</think>";
    const after = content.slice(content.indexOf(sep) + sep.length);
    const next = after.indexOf(sep);
    reply = (next >= 0 ? after.slice(0, next) : after).trim();
    if (reply === "") reply = NONE;
  } else {
    thinking = content;
    reply = NONE;
  }
  let toolCall = NONE;
  if (reply.includes(TOOL_CALL_OPEN) || reply.includes(TOOL_CALL_CLOSE)) {
    toolCall = reply.replaceAll(TOOL_CALL_OPEN, JUDGE_CALL_START).replaceAll(TOOL_CALL_CLOSE, JUDGE_CALL_END);
    reply = NONE;
  } else if (
    !content.includes(TOOL_CALL_OPEN) && !content.includes(TOOL_CALL_CLOSE) && message.tool_calls?.length
  ) {
    const blocks = message.tool_calls.map((c) => `${JUDGE_CALL_START}\n${callJson(c)}\n${JUDGE_CALL_END}`);
    toolCall = (reply === NONE ? "" : `${reply}\n`) + blocks.join("\n");
    reply = NONE;
  }
  return { thinking, reply, toolCall };
}

function callJson(call: ChatToolCall): string {
  let args: unknown = call.function.arguments;
  try {
    const parsed: unknown = JSON.parse(call.function.arguments);
    if (isJsonObject(parsed)) args = parsed;
  } catch {
    // keep the raw string
  }
  return pyJson({ name: call.function.name, arguments: args }, { ensureAscii: false });
}

/**
 * Render messages as the judge reads them (see the module doc for the format).
 *
 * @example
 * ```ts
 * renderTranscript([{ role: "user", content: "Hi" }]); // "# Turn: 0\nRole: user\ncontent: Hi\n"
 * ```
 */
export function renderTranscript(messages: readonly TranscriptMessage[]): string {
  let out = "";
  let turn = -1;
  let step = 0;
  for (const m of messages) {
    switch (m.role) {
      case "system":
        out += `Role: system\ncontent: ${m.content}\n`;
        step = 0;
        break;
      case "user":
        turn++;
        step = 0;
        out += `# Turn: ${turn}\nRole: user\ncontent: ${m.content}\n`;
        break;
      case "assistant": {
        const f = assistantFields(m);
        out += `## Step: ${step}\nRole: assistant\ncontent.thinking: ${f.thinking}\n` +
          `content.user_visible_reply: ${f.reply}\ntool_call: ${f.toolCall}\n`;
        step++;
        break;
      }
      case "tool":
        out += `Role: tool\ncontent: ${m.content}\n`;
        break;
    }
  }
  return out;
}

/** The two transcript sections of one judge call. */
export interface JudgeContext {
  /** Every message before the current turn's user message (system included); `""` for turn 0 without one. */
  previous: string;
  /** The current turn from its user message through the judged step and the tool messages right after it. */
  current: string;
}

/**
 * The judge's context for the assistant step at `stepIndex`, whose turn starts at the user message
 * `userIndex` (§4.3).
 */
export function judgeContext(
  messages: readonly TranscriptMessage[],
  userIndex: number,
  stepIndex: number,
): JudgeContext {
  if (messages[userIndex]?.role !== "user") throw new Error(`Message ${userIndex} is not a user message`);
  if (messages[stepIndex]?.role !== "assistant" || stepIndex < userIndex) {
    throw new Error(`Message ${stepIndex} is not an assistant step of the turn starting at ${userIndex}`);
  }
  let end = stepIndex + 1;
  while (messages[end]?.role === "tool") end++;
  return {
    previous: renderTranscript(messages.slice(0, userIndex)),
    current: renderTranscript(messages.slice(userIndex, end)),
  };
}
