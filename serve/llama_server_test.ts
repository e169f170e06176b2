/**
 * The llama.node server with the real SmolLM2 GGUF, through the project's own client. Skipped unless
 * CM2_GGUF names the file. About 30-60 s on 2 shared cores (the prebuilt binary has no AVX).
 */
import assert from "node:assert/strict";
import { createChatModel } from "../llm/client.ts";
import { LlmError } from "../core/llm_types.ts";
import { OPENAI_SAMPLING_DEFAULTS } from "./openai_map.ts";
import { startLlamaServer } from "./llama_server.ts";

const GGUF = Deno.env.get("CM2_GGUF");

Deno.test({
  name:
    "llama_server answers chat completions, constrains JSON to a schema and rejects prompts over the context",
  ignore: !GGUF,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const server = await startLlamaServer({
      model: GGUF!,
      host: "127.0.0.1",
      port: 0,
      ctx: 512,
      threads: 2,
      parallel: 1,
      maxQueue: 4,
      alias: "smollm2",
      policyVersion: "base",
      defaults: OPENAI_SAMPLING_DEFAULTS,
    });
    try {
      const model = createChatModel({
        role: "judge",
        baseURL: server.baseURL,
        model: "smollm2",
        timeoutMs: 120_000,
        defaults: { temperature: 0 },
      });
      const plain = await model.complete({
        messages: [{ role: "system", content: "You are a helpful assistant." }, {
          role: "user",
          content: "What is the capital of France?",
        }],
        sampling: { max_tokens: 12 },
      });
      assert.match(plain.content, /Paris/);
      assert.equal(plain.model, "smollm2");
      assert.equal(plain.policyVersion, "base");
      assert.ok(plain.usage.promptTokens > 10 && plain.usage.completionTokens > 0);
      const cut = await model.complete({
        messages: [{ role: "user", content: "Tell me a long story." }],
        sampling: { max_tokens: 5, temperature: 1, seed: 1 },
      });
      assert.equal(cut.finishReason, "length");
      assert.equal(cut.usage.completionTokens, 5);

      const schema = {
        type: "object",
        properties: { city: { type: "string", maxLength: 20 }, answer: { type: "boolean" } },
        required: ["city", "answer"],
        additionalProperties: false,
      };
      const structured = await model.complete({
        messages: [{ role: "user", content: "Is Paris the capital of France? Reply in JSON." }],
        jsonSchema: { name: "verdict", schema },
        sampling: { max_tokens: 48, temperature: 0.7, seed: 3 },
      });
      const value = JSON.parse(structured.content);
      assert.deepEqual(Object.keys(value), ["city", "answer"]);
      assert.equal(typeof value.answer, "boolean");

      await assert.rejects(
        model.complete({ messages: [{ role: "user", content: "word ".repeat(700) }] }),
        (e: unknown) => e instanceof LlmError && e.type === "BadRequest" && /context/.test(e.message),
      );
      const health = await (await fetch(server.baseURL.replace(/\/v1$/, "/health"))).json();
      assert.equal(health.status, "ok");
    } finally {
      await server.close();
    }
  },
});
