/**
 * Short load check of an OpenAI-compatible endpoint through the project's own client (`llm/client.ts`):
 * end-to-end completion tokens per second for one stream and for `--concurrency` parallel requests, and
 * how often a judge-verdict JSON schema answer parses and validates.
 *
 * @example
 * ```sh
 * deno run --allow-net=127.0.0.1 --allow-env --allow-read serve/bench.ts --url http://127.0.0.1:8766/v1 \
 *   --requests 3 --concurrency 4 --judge 20
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { createChatModel } from "../llm/client.ts";
import { LlmError } from "../core/llm_types.ts";
import { VERDICT_ANALYSIS_FIELDS, VERDICT_SCHEMA } from "../core/judge.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    url: { type: "string", default: "http://127.0.0.1:8766/v1" },
    model: { type: "string", default: "local" },
    requests: { type: "string", default: "3" },
    concurrency: { type: "string", default: "4" },
    "max-tokens": { type: "string", default: "64" },
    judge: { type: "string", default: "0" },
    "judge-max-tokens": { type: "string", default: "256" },
    temperature: { type: "string", default: "0.7" },
    "top-p": { type: "string", default: "0.95" },
  },
});

const model = createChatModel({
  role: "judge",
  baseURL: values.url,
  model: values.model,
  timeoutMs: 600_000,
  defaults: { temperature: Number(values.temperature), top_p: Number(values["top-p"]) },
});
const maxTokens = Number(values["max-tokens"]);
const prompts = [
  "Write a short story about a robot who learns to paint.",
  "Explain how a bicycle works to a child.",
  "List some tips for staying focused while studying.",
  "Describe a walk through a forest in autumn.",
];

async function stream(i: number): Promise<{ tokens: number; ms: number }> {
  const r = await model.complete({
    messages: [{ role: "user", content: prompts[i % prompts.length]! }],
    sampling: { max_tokens: maxTokens, seed: i },
  });
  return { tokens: r.usage.completionTokens, ms: r.usage.latencyMs };
}

function report(name: string, tokens: number, ms: number, extra = ""): void {
  console.log(
    `${name}: ${tokens} completion tokens in ${(ms / 1000).toFixed(1)} s = ${
      (tokens / ms * 1000).toFixed(1)
    } tok/s${extra}`,
  );
}

// Single stream, sequential.
{
  let tokens = 0, ms = 0;
  for (let i = 0; i < Number(values.requests); i++) {
    const r = await stream(i);
    tokens += r.tokens;
    ms += r.ms;
  }
  report("single stream", tokens, ms);
}

// Concurrent requests.
const concurrency = Number(values.concurrency);
if (concurrency > 1) {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: concurrency }, (_, i) => stream(i)));
  const wall = performance.now() - t0;
  const tokens = rs.reduce((a, r) => a + r.tokens, 0);
  report(
    `${concurrency} parallel requests (aggregate)`,
    tokens,
    wall,
    `; per-request latency ${rs.map((r) => (r.ms / 1000).toFixed(1)).join(", ")} s`,
  );
}

// Judge verdicts under the JSON-schema grammar.
const judgeCalls = Number(values.judge);
if (judgeCalls > 0) {
  const Verdict = z.object({
    ...Object.fromEntries(VERDICT_ANALYSIS_FIELDS.map((f) => [f, z.string()])),
    answer: z.boolean(),
  }).strict();
  const transcript = "User: Book me a table for two at 7pm at Luigi's.\n" +
    'Assistant: [tool call] book_table({"restaurant": "Luigi\'s", "time": "19:00", "people": 2})\n' +
    'Tool: {"status": "confirmed", "id": "B-17"}\nAssistant: Your table for two at 7pm is booked (B-17).';
  const prompt = "You are a checklist evaluator. Decide whether the assistant met the criterion.\n\n" +
    "Criterion: The assistant booked the table for exactly two people at 19:00 and told the user the booking id.\n\n" +
    `Conversation:\n${transcript}\n\nAnswer with one JSON object with exactly these keys, in this order: ` +
    VERDICT_ANALYSIS_FIELDS.map((f) => `"${f}": str`).join(", ") + ', "answer": bool.';
  let ok = 0, tokens = 0, ms = 0;
  const failures: Record<string, number> = {};
  for (let i = 0; i < judgeCalls; i++) {
    try {
      const r = await model.complete({
        messages: [{ role: "user", content: prompt }],
        jsonSchema: { name: "evaluation_verdict", schema: VERDICT_SCHEMA },
        sampling: { seed: 1000 + i, max_tokens: Number(values["judge-max-tokens"]) },
      });
      tokens += r.usage.completionTokens;
      ms += r.usage.latencyMs;
      let parsed: unknown;
      try {
        parsed = JSON.parse(r.content);
      } catch {
        failures[`not JSON (finish ${r.finishReason})`] =
          (failures[`not JSON (finish ${r.finishReason})`] ?? 0) + 1;
        continue;
      }
      if (Verdict.safeParse(parsed).success) ok++;
      else failures["JSON fails the schema"] = (failures["JSON fails the schema"] ?? 0) + 1;
    } catch (e) {
      const k = e instanceof LlmError ? e.type : String(e);
      failures[k] = (failures[k] ?? 0) + 1;
    }
  }
  report(
    `judge verdicts: ${ok}/${judgeCalls} parsed and validated`,
    tokens,
    ms,
    `; failures ${JSON.stringify(failures)}`,
  );
}
