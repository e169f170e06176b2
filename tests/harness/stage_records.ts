/**
 * Records for the record-stage tests: the sample ToolTalk records (which have no reasoning) with a
 * `<think>` block put in front of every assistant message, long enough to be compressed.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { ROOT } from "../../scripts/paths.ts";
import { type TrajectoryRecord, TrajectoryRecordSchema } from "../../core/records.ts";

/** The records of `data/sample/tooltalk_sample.jsonl`, as they are. */
export async function sampleStageRecords(): Promise<TrajectoryRecord[]> {
  const text = await fs.readFile(path.join(ROOT, "data/sample/tooltalk_sample.jsonl"), "utf8");
  return text.trim().split("\n").map((l) => TrajectoryRecordSchema.parse(JSON.parse(l)));
}

/** A reasoning text for assistant message `index` (about 300 characters, repetitive on purpose). */
export function longReasoning(index: number, calls: readonly string[]): string {
  const plan = calls.length > 0 ? `call ${calls.join(" and ")}` : "answer the user directly";
  return [
    `Let me think about message ${index}. The user wants something done and I should look at what they said.`,
    `Looking at the request again, the best plan is to ${plan}.`,
    `I considered other options, but they do not fit as well, so I will ${plan}.`,
    "I should double-check the details before I act, and keep the reply short and clear for the user.",
  ].join(" ");
}

/** The record with `<think>\n…\n</think>\n\n` before the content of every assistant message. */
export function withReasoning(record: TrajectoryRecord): TrajectoryRecord {
  return {
    ...record,
    messages: record.messages.map((m, i) =>
      m.role !== "assistant" ? m : {
        ...m,
        content: `<think>\n${
          longReasoning(i, m.tool_calls.map((c) => c.function.name))
        }\n</think>\n\n${m.content}`,
      }
    ),
  };
}

/** A short reasoning that keeps the plan of message `index` (well under half of {@linkcode longReasoning}). */
export function shortReasoning(index: number, calls: readonly string[]): string {
  return calls.length > 0 ? `Plan for ${index}: call ${calls.join(", ")}.` : `Answer directly (${index}).`;
}

/** A valid compression answer for a record built by {@linkcode withReasoning}. */
export function compressAnswerFor(
  record: TrajectoryRecord,
): { messages: { index: number; thinking: string }[] } {
  const messages: { index: number; thinking: string }[] = [];
  record.messages.forEach((m, index) => {
    if (m.role === "assistant" && m.content.includes("<think>")) {
      messages.push({ index, thinking: shortReasoning(index, m.tool_calls.map((c) => c.function.name)) });
    }
  });
  return { messages };
}
