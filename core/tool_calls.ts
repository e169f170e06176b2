/**
 * Tool calls of a policy step: parsed from the API's structured `tool_calls`, or from the reference wire
 * format in the text (`\n<tool_call>\n{json}\n</tool_call>`, §2.2 step 3 and §8.1). A malformed call is
 * not an exception: it is a {@linkcode ToolCallParse} of kind `error` whose message goes back to the
 * policy as an `error_tool_call` tool message, and the episode ends.
 *
 * Pure, no I/O.
 *
 * @module
 */
import type { ChatToolCall } from "./llm_types.ts";
import { isJsonObject, pyJson } from "./canonical_json.ts";

/** Opening tag of a tool call in the wire format. */
export const TOOL_CALL_OPEN = "<tool_call>";
/** Closing tag of a tool call in the wire format. */
export const TOOL_CALL_CLOSE = "</tool_call>";

/** One well-formed tool call: a trimmed non-empty name and an object of arguments. */
export interface ParsedToolCall {
  id: string;
  name: string;
  arguments: Record<string, unknown>;
}

/** Outcome of parsing one policy step. */
export type ToolCallParse =
  | { kind: "none" }
  | { kind: "calls"; calls: ParsedToolCall[] }
  | { kind: "error"; message: string };

// Newlines around both tags are required, exactly as in the reference parser.
const BLOCK_RE = /\n<tool_call>\n([\s\S]*?)\n<\/tool_call>/g;

/**
 * Parse tool calls written in the text. Returns `none` when the text holds neither tag, `error` when a
 * tag is present but no well-formed block is, or when any block is malformed: not JSON, not an object
 * or array of objects, a missing or empty `name`, missing arguments, or arguments that are not an
 * object. Arguments come from `parameters`, else `arguments` (as the reference); a JSON string holding
 * an object is not accepted (the reference rejects it too). Ids are `${idPrefix}_${k}`.
 *
 * @example
 * ```ts
 * parseToolCallText('<think>x</think>\n<tool_call>\n{"name":"f","arguments":{"a":1}}\n</tool_call>', "call_0");
 * // { kind: "calls", calls: [{ id: "call_0_0", name: "f", arguments: { a: 1 } }] }
 * ```
 */
export function parseToolCallText(content: string, idPrefix = "call"): ToolCallParse {
  if (!content.includes(TOOL_CALL_OPEN) && !content.includes(TOOL_CALL_CLOSE)) return { kind: "none" };
  const blocks = [...content.matchAll(BLOCK_RE)].map((m) => m[1]!);
  if (blocks.length === 0) {
    return {
      kind: "error",
      message: "A tool call tag was found but no well-formed call: write each call as " +
        '"\\n<tool_call>\\n{\\"name\\": ..., \\"arguments\\": {...}}\\n</tool_call>"',
    };
  }
  const calls: ParsedToolCall[] = [];
  for (const block of blocks) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(block);
    } catch (err) {
      return { kind: "error", message: `A tool call is not valid JSON: ${(err as Error).message}` };
    }
    const entries = Array.isArray(parsed) ? parsed : [parsed];
    if (entries.length === 0) return { kind: "error", message: "A tool call block holds an empty array" };
    for (const entry of entries) {
      const one = checkCall(entry, `${idPrefix}_${calls.length}`);
      if ("message" in one) return { kind: "error", message: one.message };
      calls.push(one);
    }
  }
  return { kind: "calls", calls };
}

function checkCall(entry: unknown, id: string): ParsedToolCall | { message: string } {
  if (!isJsonObject(entry)) return { message: `A tool call must be a JSON object, got ${describe(entry)}` };
  const name = typeof entry.name === "string" ? entry.name.trim() : "";
  if (name === "") return { message: `A tool call has no valid name: ${describe(entry.name)}` };
  const args = entry.parameters !== undefined ? entry.parameters : entry.arguments;
  if (args === undefined) return { message: `Tool call ${name} has no arguments (use {} for none)` };
  if (!isJsonObject(args)) {
    return { message: `Arguments of tool call ${name} must be a JSON object, got ${describe(args)}` };
  }
  return { id, name, arguments: args };
}

/**
 * Check structured tool calls returned by the API: each name non-empty, each `arguments` string a JSON
 * object (an empty string counts as `{}`). Any bad call makes the whole step an `error`.
 */
export function parseStructuredToolCalls(
  toolCalls: readonly ChatToolCall[],
  idPrefix = "call",
): ToolCallParse {
  if (toolCalls.length === 0) return { kind: "none" };
  const calls: ParsedToolCall[] = [];
  for (const [k, call] of toolCalls.entries()) {
    const name = call.function.name.trim();
    if (name === "") return { kind: "error", message: `Tool call ${k} has an empty name` };
    const raw = call.function.arguments.trim();
    let args: unknown = {};
    if (raw !== "") {
      try {
        args = JSON.parse(raw);
      } catch (err) {
        return {
          kind: "error",
          message: `Arguments of tool call ${name} are not valid JSON: ${(err as Error).message}`,
        };
      }
    }
    if (!isJsonObject(args)) {
      return {
        kind: "error",
        message: `Arguments of tool call ${name} must be a JSON object, got ${describe(args)}`,
      };
    }
    calls.push({ id: call.id !== "" ? call.id : `${idPrefix}_${k}`, name, arguments: args });
  }
  return { kind: "calls", calls };
}

/** The OpenAI-format `tool_calls` of parsed calls (arguments JSON-encoded). */
export function toChatToolCalls(calls: readonly ParsedToolCall[]): ChatToolCall[] {
  return calls.map((c) => ({
    id: c.id,
    type: "function",
    function: { name: c.name, arguments: JSON.stringify(c.arguments) },
  }));
}

/** Writes calls in the wire format the policy is taught (`\n<tool_call>\n{json}\n</tool_call>` each). */
export function formatToolCallText(calls: readonly Pick<ParsedToolCall, "name" | "arguments">[]): string {
  return calls.map((c) =>
    `\n${TOOL_CALL_OPEN}\n${
      pyJson({ name: c.name, arguments: c.arguments }, { ensureAscii: false })
    }\n${TOOL_CALL_CLOSE}`
  ).join("");
}

/** The tool message content for an error: `{"error_tool_call": message}` (ASCII-escaped, as the reference). */
export function toolCallErrorContent(message: string): string {
  return pyJson({ error_tool_call: message });
}

/** Whether a tool message content reports an error; the reference tests for this substring (§8.2). */
export function isErrorToolContent(content: string): boolean {
  return content.includes("error_tool_call");
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

/**
 * The text without its wire-format tool-call blocks (trailing whitespace trimmed), for sending a
 * text-call step back to an endpoint that renders the structured `tool_calls` itself.
 */
export function stripToolCallBlocks(content: string): string {
  return content.replace(BLOCK_RE, "").trimEnd();
}
