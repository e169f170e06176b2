import assert from "node:assert/strict";
import { z } from "zod";
import { type ChatModel, type ChatRequest, LlmError } from "../../core/llm_types.ts";
import {
  buildRequestBody,
  type ChatModelOptions,
  createChatModel,
  parseRetryAfter,
} from "../../llm/client.ts";
import { completeJson, jsonCandidates, parseStructured } from "../../llm/structured.ts";
import { mergeUsage, meterModel, type UsageLedger } from "../../llm/usage.ts";
import {
  judgeAlways,
  type ScriptedReply,
  type ScriptedServer,
  type ScriptedServerOptions,
  scriptFromQueue,
  startScriptedServer,
} from "../scripted_server.ts";

const Verdict = z.object({
  high_level_understanding_of_the_question: z.string(),
  analysis_of_if_focus_on: z.string(),
  analysis_of_pass_condition: z.string(),
  analysis_of_failure_examples: z.string(),
  answer: z.boolean(),
});

const Simple = z.object({ name: z.string(), count: z.number().int() });

const ask: ChatRequest = { messages: [{ role: "user", content: "Hello" }] };

async function withServer(
  opts: ScriptedServerOptions,
  fn: (server: ScriptedServer) => Promise<void>,
): Promise<void> {
  const server = startScriptedServer(opts);
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

function modelFor(server: ScriptedServer, extra: Partial<ChatModelOptions> = {}): ChatModel {
  return createChatModel({
    role: "policy",
    baseURL: server.url,
    model: "policy-model",
    timeoutMs: 5_000,
    defaults: { temperature: 0.7, top_p: 0.9, max_tokens: 256 },
    ...extra,
  });
}

function replying(...replies: ScriptedReply[]): ScriptedServerOptions {
  return { handler: scriptFromQueue(replies) };
}

async function failure(p: Promise<unknown>): Promise<LlmError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof LlmError, `expected LlmError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected the call to fail");
}

Deno.test("createChatModel() sends messages, tools and sampling and maps tool calls back", async () => {
  await withServer(
    replying({
      toolCalls: [{ name: "search", arguments: { q: "weather" } }, { name: "clock", arguments: "{}" }],
    }),
    async (server) => {
      const model = modelFor(server, { apiKey: "sk-test-secret" });
      const result = await model.complete({
        messages: [
          { role: "system", content: "Be brief" },
          { role: "user", content: "Weather?" },
          {
            role: "assistant",
            content: "",
            tool_calls: [{ id: "c0", type: "function", function: { name: "clock", arguments: "{}" } }],
          },
          { role: "tool", content: "12:00", tool_call_id: "c0" },
        ],
        tools: [{ type: "function", function: { name: "search", parameters: { type: "object" } } }],
        sampling: { temperature: 0.2, seed: 7 },
      });
      assert.equal(result.finishReason, "tool_calls");
      assert.deepEqual(result.toolCalls.map((c) => [c.type, c.function.name, c.function.arguments]), [
        ["function", "search", '{"q":"weather"}'],
        ["function", "clock", "{}"],
      ]);
      assert.equal(result.content, "");
      assert.equal(result.model, "policy-model");
      assert.ok(result.usage.promptTokens > 0 && result.usage.completionTokens > 0);
      assert.ok(result.usage.latencyMs >= 0);
      assert.equal(result.policyVersion, undefined);

      const call = server.calls[0];
      assert.ok(call);
      assert.equal(call.model, "policy-model");
      assert.equal(call.body.temperature, 0.2);
      assert.equal(call.body.top_p, 0.9);
      assert.equal(call.body.max_tokens, 256);
      assert.equal(call.body.seed, 7);
      assert.equal(call.tools?.length, 1);
      assert.equal(call.response_format, undefined);
      assert.equal(call.messages[2]?.content, null);
      assert.equal(call.messages[3]?.tool_call_id, "c0");
      assert.equal((call.body as { logprobs?: unknown }).logprobs, undefined);
    },
  );
});

Deno.test("createChatModel() omits tools when the list is empty and maps plain content", async () => {
  await withServer(replying({ content: "Hi there" }), async (server) => {
    const result = await modelFor(server).complete({ ...ask, tools: [] });
    assert.equal(result.content, "Hi there");
    assert.equal(result.finishReason, "stop");
    assert.deepEqual(result.toolCalls, []);
    assert.equal("tools" in (server.calls[0]?.body ?? {}), false);
  });
});

Deno.test("createChatModel() sends the API key as a bearer token and never falls back to OPENAI_API_KEY", async () => {
  const previous = Deno.env.get("OPENAI_API_KEY");
  Deno.env.set("OPENAI_API_KEY", "env-key-must-not-leak");
  try {
    await withServer(replying({ content: "a" }, { content: "b" }), async (server) => {
      await modelFor(server, { apiKey: "sk-given" }).complete(ask);
      await modelFor(server).complete(ask);
      assert.equal(server.calls[0]?.headers.authorization, "Bearer sk-given");
      assert.equal(server.calls[1]?.headers.authorization, "Bearer no-key");
    });
  } finally {
    if (previous === undefined) Deno.env.delete("OPENAI_API_KEY");
    else Deno.env.set("OPENAI_API_KEY", previous);
  }
});

Deno.test("createChatModel() maps 429 with Retry-After seconds to a retryable RateLimited error", async () => {
  await withServer(replying({ fault: "429", retryAfterS: 2 }), async (server) => {
    const err = await failure(modelFor(server).complete(ask));
    assert.equal(err.type, "RateLimited");
    assert.equal(err.retryAfterMs, 2_000);
    assert.equal(err.retryable, true);
    assert.equal(server.calls.length, 1, "the client must not retry by itself");
  });
});

Deno.test("createChatModel() maps 429 with retry-after-ms or an HTTP date to retryAfterMs", async () => {
  const date = new Date(Date.now() + 30_000).toUTCString();
  await withServer(
    replying({ fault: "429", retryAfterMs: 1_500, retryAfterS: 9 }, { fault: "429", retryAfter: date }, {
      fault: "429",
    }),
    async (server) => {
      const model = modelFor(server);
      assert.equal((await failure(model.complete(ask))).retryAfterMs, 1_500);
      const dated = (await failure(model.complete(ask))).retryAfterMs;
      assert.ok(dated !== undefined && dated > 20_000 && dated <= 30_000, `got ${dated}`);
      const bare = await failure(model.complete(ask));
      assert.equal(bare.type, "RateLimited");
      assert.equal(bare.retryAfterMs, undefined);
    },
  );
});

Deno.test("parseRetryAfter() reads seconds, milliseconds and HTTP dates and ignores junk", () => {
  const now = Date.parse("2025-01-01T00:00:00Z");
  assert.equal(parseRetryAfter(new Headers({ "retry-after": "1.5" }), now), 1_500);
  assert.equal(parseRetryAfter(new Headers({ "retry-after-ms": "250" }), now), 250);
  assert.equal(parseRetryAfter(new Headers({ "retry-after": "Wed, 01 Jan 2025 00:00:10 GMT" }), now), 10_000);
  assert.equal(parseRetryAfter(new Headers({ "retry-after": "Tue, 31 Dec 2024 00:00:00 GMT" }), now), 0);
  assert.equal(parseRetryAfter(new Headers({ "retry-after": "soon" }), now), undefined);
  assert.equal(parseRetryAfter(new Headers(), now), undefined);
});

Deno.test("createChatModel() maps 5xx to a retryable ServerError", async () => {
  await withServer(replying({ fault: "500" }, { fault: "500", status: 503 }), async (server) => {
    const model = modelFor(server);
    for (const status of [500, 503]) {
      const err = await failure(model.complete(ask));
      assert.equal(err.type, "ServerError");
      assert.equal(err.retryable, true);
      assert.match(err.message, new RegExp(`HTTP ${status}`));
    }
  });
});

Deno.test("createChatModel() maps other 4xx to a non-retryable BadRequest", async () => {
  await withServer({ roles: { "other-model": scriptFromQueue([]) } }, async (server) => {
    const err = await failure(modelFor(server).complete(ask));
    assert.equal(err.type, "BadRequest");
    assert.equal(err.retryable, false);
    assert.match(err.message, /HTTP 404/);
  });
});

Deno.test("createChatModel() maps a hang past the client timeout to a retryable Timeout", async () => {
  await withServer(replying({ fault: "timeout", delayMs: 3_000 }), async (server) => {
    const started = Date.now();
    const err = await failure(modelFor(server, { timeoutMs: 300 }).complete(ask));
    const elapsed = Date.now() - started;
    assert.equal(err.type, "Timeout");
    assert.equal(err.retryable, true);
    assert.ok(elapsed >= 250 && elapsed < 2_000, `timed out after ${elapsed} ms`);
  });
});

Deno.test("createChatModel() maps a refused connection to a retryable Network error", async () => {
  const server = startScriptedServer(replying());
  const url = server.url;
  await server.close();
  const model = createChatModel({ role: "judge", baseURL: url, model: "m", timeoutMs: 2_000, defaults: {} });
  const err = await failure(model.complete(ask));
  assert.equal(err.type, "Network");
  assert.equal(err.retryable, true);
});

Deno.test("createChatModel() maps message.refusal and content_filter to a non-retryable Refusal", async () => {
  await withServer(
    replying({ fault: "refusal" }, { fault: "refusal", via: "content_filter" }),
    async (server) => {
      const model = modelFor(server);
      const refused = await failure(model.complete(ask));
      assert.equal(refused.type, "Refusal");
      assert.match(refused.message, /can't help/);
      assert.equal(refused.retryable, false);
      assert.equal((await failure(model.complete(ask))).type, "Refusal");
    },
  );
});

Deno.test("createChatModel() reports the policy version from x-cm2-policy-version, else system_fingerprint", async () => {
  await withServer(
    { handler: scriptFromQueue([{ content: "a" }]), policyVersion: "lora-it-3", systemFingerprint: "fp_1" },
    async (server) => {
      assert.equal((await modelFor(server).complete(ask)).policyVersion, "lora-it-3");
    },
  );
  await withServer(
    { handler: scriptFromQueue([{ content: "a" }]), systemFingerprint: "fp_1" },
    async (server) => {
      assert.equal((await modelFor(server).complete(ask)).policyVersion, "fp_1");
    },
  );
});

Deno.test("createChatModel() asks for logprobs and vLLM token ids when wantTokens is set", async () => {
  await withServer(replying({ content: "ok", tokenIds: [11, 12, 13] }, { content: "ok" }), async (server) => {
    const model = modelFor(server, { returnTokenIds: true });
    const result = await model.complete({ ...ask, wantTokens: true });
    assert.deepEqual(result.completion, { tokenIds: [11, 12, 13], logprobs: [-0.5, -0.5, -0.5] });
    const body = server.calls[0]?.body ?? {};
    assert.equal(body.logprobs, true);
    assert.equal(body.return_token_ids, true);
    const without = await model.complete({ ...ask, wantTokens: true });
    assert.equal(without.completion, undefined);
  });
});

Deno.test("a run config with rollout correction asks its vLLM policy endpoint for token ids and log-probs", async () => {
  const { parseRunConfig } = await import("../../core/config.ts");
  const { episodeOptionsOf } = await import("../../core/episode_options.ts");
  const { policyRequest, startEpisode } = await import("../../core/episode.ts");
  const { roleModel } = await import("../../config.ts");
  const replies = [{ content: "ok", tokenIds: [7, 8] }, { content: "ok", tokenIds: [7, 8] }, {
    content: "ok",
  }];
  await withServer(replying(...replies), async (server) => {
    for (const adapterApi of ["vllm", "cm2", "none"] as const) {
      const parsed = parseRunConfig({ models: { policy: { baseURL: server.url, model: "p", adapterApi } } });
      assert.ok(parsed.ok);
      const options = episodeOptionsOf(parsed.config);
      assert.equal(options.wantTokens, true, "rollout correction is on by default");
      const record = {
        uuid: "r",
        tools: [],
        messages: [
          { role: "user" as const, content: "Hi", tool_calls: [] },
          { role: "assistant" as const, content: "Hello", tool_calls: [] },
        ],
        checklists: [[[{
          id: "C0",
          evidence: [],
          focus_on: "assistant.content.user_visible_reply" as const,
          question: "q",
          pass_condition: "p",
          failure_examples: [],
          required_for_next_turn: false,
          dependence: [],
          weight: 1,
        }]]],
      };
      const req = policyRequest(startEpisode(record, options));
      const result = await roleModel("policy", parsed.config.models.policy).complete(req);
      const body = server.calls.at(-1)?.body ?? {};
      assert.equal(body.logprobs, true);
      assert.equal(body.return_token_ids, adapterApi === "none" ? undefined : true, adapterApi);
      if (adapterApi !== "none") assert.deepEqual(result.completion?.tokenIds, [7, 8]);
    }
    const off = parseRunConfig({ trainer: { rolloutIsCap: null } });
    assert.ok(off.ok);
    assert.equal(episodeOptionsOf(off.config).wantTokens, false);
  });
});

Deno.test("completeJson() sends a strict json_schema response format and returns the validated value", async () => {
  await withServer({ handler: judgeAlways(true) }, async (server) => {
    const { value, result } = await completeJson(modelFor(server), ask, Verdict, {
      name: "evaluation_verdict",
    });
    assert.equal(value.answer, true);
    assert.equal(result.finishReason, "stop");
    const format = server.calls[0]?.response_format as {
      type: string;
      json_schema: { name: string; strict: boolean; schema: Record<string, unknown> };
    };
    assert.equal(format.type, "json_schema");
    assert.equal(format.json_schema.name, "evaluation_verdict");
    assert.equal(format.json_schema.strict, true);
    assert.equal(format.json_schema.schema.additionalProperties, false);
    assert.equal("$schema" in format.json_schema.schema, false);
    assert.deepEqual((format.json_schema.schema.required as string[]).at(-1), "answer");
  });
});

Deno.test("completeJson() extracts fenced JSON in json_object and prompt-only modes", async () => {
  await withServer(
    replying(
      { content: 'Here you go:\n```json\n{"name": "a", "count": 2}\n```\nAnything else?' },
      { content: '<think>{"draft": true}</think>\nResult: {"name": "b", "count": 3} — done' },
    ),
    async (server) => {
      const model = modelFor(server);
      const first = await completeJson(model, ask, Simple, { name: "simple", jsonMode: "object" });
      assert.deepEqual(first.value, { name: "a", count: 2 });
      assert.deepEqual(server.calls[0]?.response_format, { type: "json_object" });
      const second = await completeJson(model, ask, Simple, { name: "simple", jsonMode: "none" });
      assert.deepEqual(second.value, { name: "b", count: 3 });
      assert.equal(server.calls[1]?.response_format, undefined);
    },
  );
});

Deno.test("parseStructured() tries raw text, fences, each fenced block and brace slices", () => {
  const name = "simple";
  assert.deepEqual(parseStructured('{"name":"x","count":1}', Simple, { name }), { name: "x", count: 1 });
  assert.deepEqual(parseStructured('```\n{"name":"x","count":1}\n```', Simple, { name }), {
    name: "x",
    count: 1,
  });
  const twoBlocks = '```json\n{"other": 1}\n```\nthen\n```json\n{"name":"y","count":5}\n```';
  assert.deepEqual(parseStructured(twoBlocks, Simple, { name }), { name: "y", count: 5 });
  assert.deepEqual(parseStructured("List: [1, 2, 3].", z.array(z.number()), { name }), [1, 2, 3]);
  assert.ok(jsonCandidates("a {b} c").includes("{b}"));
});

Deno.test("completeJson() names the field and value when output violates the schema", async () => {
  await withServer(
    replying({ json: { high_level_understanding_of_the_question: "q", answer: "maybe" } }),
    async (server) => {
      const err = await failure(completeJson(modelFor(server), ask, Verdict, { name: "evaluation_verdict" }));
      assert.equal(err.type, "SchemaViolation");
      assert.equal(err.retryable, false);
      assert.match(err.message, /evaluation_verdict/);
      assert.match(err.message, /field answer is "maybe"/);
      assert.match(err.message, /field analysis_of_if_focus_on is missing/);
    },
  );
});

Deno.test("completeJson() maps malformed (non-JSON) output to SchemaViolation", async () => {
  await withServer(replying({ fault: "malformed-json" }), async (server) => {
    const err = await failure(completeJson(modelFor(server), ask, Verdict, { name: "evaluation_verdict" }));
    assert.equal(err.type, "SchemaViolation");
    assert.match(err.message, /is not JSON: "Sure!/);
  });
});

Deno.test("completeJson() maps finish_reason length with cut JSON to Truncated", async () => {
  await withServer(replying({ fault: "truncated-json" }), async (server) => {
    const err = await failure(completeJson(modelFor(server), ask, Verdict, { name: "evaluation_verdict" }));
    assert.equal(err.type, "Truncated");
    assert.equal(err.retryable, false);
  });
});

Deno.test("meterModel() accounts calls, failures, tokens, latency and cost per role, and ledgers merge", async () => {
  await withServer(
    {
      ...replying(
        { content: "a", usage: { promptTokens: 1_000, completionTokens: 500 } },
        { fault: "500" },
        { content: "b", usage: { promptTokens: 3_000, completionTokens: 1_500 } },
        { fault: "429", retryAfterS: 1 },
      ),
      latencyMs: 20,
    },
    async (server) => {
      const ledger: UsageLedger = {};
      const model = meterModel(modelFor(server), ledger, { inputPer1M: 1, outputPer1M: 2 });
      await model.complete(ask);
      await failure(model.complete(ask));
      await model.complete(ask);
      await failure(model.complete(ask));
      const policy = ledger.policy;
      assert.ok(policy);
      assert.equal(policy.calls, 2);
      assert.deepEqual(policy.failures, { ServerError: 1, RateLimited: 1 });
      assert.equal(policy.promptTokens, 4_000);
      assert.equal(policy.completionTokens, 2_000);
      assert.ok(Math.abs(policy.costUsd - 0.008) < 1e-12, `cost ${policy.costUsd}`);
      assert.ok(policy.latencyMsMax >= 15 && policy.latencyMsSum >= policy.latencyMsMax);

      const roundTripped = JSON.parse(JSON.stringify(ledger)) as UsageLedger;
      const merged = mergeUsage(roundTripped, ledger, {
        judge: { ...policy, failures: { Timeout: 2 }, latencyMsMax: 99_999 },
      });
      assert.equal(merged.policy?.calls, 4);
      assert.deepEqual(merged.policy?.failures, { ServerError: 2, RateLimited: 2 });
      assert.equal(merged.policy?.promptTokens, 8_000);
      assert.equal(merged.policy?.latencyMsMax, policy.latencyMsMax);
      assert.deepEqual(merged.judge?.failures, { Timeout: 2 });
      assert.equal(merged.judge?.latencyMsMax, 99_999);
      assert.equal(ledger.policy?.calls, 2, "inputs are unchanged");
    },
  );
});

Deno.test("buildRequestBody() bounds JSON-schema strings only when jsonMaxString is set", () => {
  const schema = { type: "object", properties: { a: { type: "string" }, b: { type: "boolean" } } };
  const req = { messages: [{ role: "user" as const, content: "x" }], jsonSchema: { name: "v", schema } };
  const plain = buildRequestBody("m", {}, req, false) as unknown as {
    response_format: { json_schema: { schema: unknown } };
  };
  assert.deepEqual(plain.response_format.json_schema.schema, schema);
  const bounded = buildRequestBody("m", {}, req, false, 50) as unknown as {
    response_format: { json_schema: { schema: { properties: Record<string, Record<string, unknown>> } } };
  };
  assert.equal(bounded.response_format.json_schema.schema.properties.a!.maxLength, 50);
  assert.equal(bounded.response_format.json_schema.schema.properties.b!.maxLength, undefined);
});
