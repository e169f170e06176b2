import assert from "node:assert/strict";
import {
  judgeAlways,
  judgeVerdict,
  type ScriptedServer,
  type ScriptedServerOptions,
  scriptFromQueue,
  startScriptedServer,
} from "../scripted_server.ts";

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

interface Completion {
  model: string;
  choices: Array<{
    finish_reason: string;
    message: {
      content: string | null;
      refusal: string | null;
      tool_calls?: Array<{ id: string; function: { name: string; arguments: string } }>;
    };
  }>;
  usage: { prompt_tokens: number; completion_tokens: number };
}

async function post(
  server: ScriptedServer,
  body: Record<string, unknown>,
): Promise<{ status: number; headers: Headers; json: Completion }> {
  const res = await fetch(`${server.url}/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: await res.json() };
}

function chat(model: string, content = "hi", extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { model, messages: [{ role: "user", content }], ...extra };
}

Deno.test("startScriptedServer() routes by model so one server plays policy, judge and simulator", async () => {
  await withServer(
    {
      roles: {
        policy: scriptFromQueue([{ toolCalls: [{ name: "search", arguments: { q: "x" } }] }, {
          content: "Done",
        }]),
        judge: judgeAlways(false),
        simulator: () => ({ json: { result: "sunny" } }),
      },
    },
    async (server) => {
      const step = await post(server, chat("policy"));
      const call = step.json.choices[0]?.message.tool_calls?.[0];
      assert.equal(step.json.choices[0]?.finish_reason, "tool_calls");
      assert.equal(call?.function.name, "search");
      assert.deepEqual(JSON.parse(call?.function.arguments ?? ""), { q: "x" });
      assert.deepEqual(
        JSON.parse((await post(server, chat("simulator"))).json.choices[0]?.message.content ?? ""),
        {
          result: "sunny",
        },
      );
      assert.equal((await post(server, chat("policy"))).json.choices[0]?.message.content, "Done");
      const verdict = JSON.parse((await post(server, chat("judge"))).json.choices[0]?.message.content ?? "");
      assert.equal(verdict.answer, false);
      assert.deepEqual(server.countBy(), { policy: 2, simulator: 1, judge: 1 });
      assert.deepEqual(server.calls.map((c) => c.kind), ["toolCalls", "json", "content", "json"]);

      const models = await (await fetch(`${server.url}/models`)).json();
      assert.deepEqual(models.data.map((m: { id: string }) => m.id), ["policy", "judge", "simulator"]);
    },
  );
});

Deno.test("startScriptedServer() answers unknown models with 404 and an overrun queue with 500", async () => {
  await withServer({ roles: { policy: scriptFromQueue([{ content: "only" }]) } }, async (server) => {
    assert.equal((await post(server, chat("nobody"))).status, 404);
    assert.equal((await post(server, chat("policy"))).status, 200);
    const overrun = await post(server, chat("policy"));
    assert.equal(overrun.status, 500);
    assert.match(JSON.stringify(overrun.json), /overran/);
    assert.deepEqual(server.calls.map((c) => c.status), [404, 200, 500]);
    const res = await fetch(`${server.url.replace("/v1", "")}/elsewhere`);
    await res.body?.cancel();
    assert.equal(res.status, 404);
  });
});

Deno.test("startScriptedServer() records model, messages, tools, response_format and timestamps", async () => {
  await withServer({ handler: scriptFromQueue([{ content: "a" }]) }, async (server) => {
    const before = Date.now();
    await post(
      server,
      chat("m", "question", {
        tools: [{ type: "function", function: { name: "t" } }],
        response_format: { type: "json_object" },
      }),
    );
    const call = server.calls[0];
    assert.ok(call);
    assert.equal(call.index, 0);
    assert.equal(call.model, "m");
    assert.deepEqual(call.messages, [{ role: "user", content: "question" }]);
    assert.equal(call.tools?.length, 1);
    assert.deepEqual(call.response_format, { type: "json_object" });
    assert.ok(call.startedAt >= before && (call.endedAt ?? 0) >= call.startedAt);
    assert.equal(call.headers["content-type"], "application/json");
  });
});

Deno.test("startScriptedServer() adds the fixed latency to every call and sets the policy version header", async () => {
  await withServer(
    { handler: () => ({ content: "x" }), latencyMs: 100, policyVersion: "adapter-7" },
    async (server) => {
      const started = Date.now();
      const replies = await Promise.all([post(server, chat("m")), post(server, chat("m"))]);
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 95 && elapsed < 1_000, `two parallel calls took ${elapsed} ms`);
      for (const r of replies) assert.equal(r.headers.get("x-cm2-policy-version"), "adapter-7");
    },
  );
});

Deno.test("startScriptedServer() bounds a scripted hang by maxDelayMs so it ends by itself", async () => {
  await withServer(
    { handler: () => ({ fault: "timeout", delayMs: 60_000 }), maxDelayMs: 150 },
    async (server) => {
      const started = Date.now();
      const r = await post(server, chat("m"));
      const elapsed = Date.now() - started;
      assert.equal(r.status, 200);
      assert.ok(elapsed >= 140 && elapsed < 2_000, `hang lasted ${elapsed} ms`);
    },
  );
});

Deno.test("startScriptedServer() scripts 429 headers, truncated and malformed JSON and refusals", async () => {
  await withServer(
    {
      handler: scriptFromQueue([
        { fault: "429", retryAfterS: 3, retryAfterMs: 2_500 },
        { fault: "truncated-json" },
        { fault: "malformed-json" },
        { fault: "refusal" },
        { fault: "refusal", via: "content_filter" },
      ]),
    },
    async (server) => {
      const limited = await post(server, chat("m"));
      assert.equal(limited.status, 429);
      assert.equal(limited.headers.get("retry-after"), "3");
      assert.equal(limited.headers.get("retry-after-ms"), "2500");

      const cut = await post(server, chat("m"));
      assert.equal(cut.json.choices[0]?.finish_reason, "length");
      const text = cut.json.choices[0]?.message.content ?? "";
      assert.ok(JSON.stringify(judgeVerdict(true)).startsWith(text) && text.length > 0);
      assert.throws(() => JSON.parse(text));

      const malformed = (await post(server, chat("m"))).json.choices[0]?.message.content ?? "";
      assert.throws(() => JSON.parse(malformed));

      const refused = (await post(server, chat("m"))).json.choices[0];
      assert.equal(refused?.message.content, null);
      assert.match(refused?.message.refusal ?? "", /can't help/);
      assert.equal((await post(server, chat("m"))).json.choices[0]?.finish_reason, "content_filter");
    },
  );
});

Deno.test("judgeAlways() puts the analysis fields before answer and can decide from the prompt", async () => {
  await withServer({ handler: judgeAlways((prompt) => prompt.includes("PASS")) }, async (server) => {
    const yes = JSON.parse(
      (await post(server, chat("judge", "item: PASS"))).json.choices[0]?.message.content ?? "",
    );
    const no = JSON.parse(
      (await post(server, chat("judge", "item: nope"))).json.choices[0]?.message.content ?? "",
    );
    assert.deepEqual(Object.keys(yes), [
      "high_level_understanding_of_the_question",
      "analysis_of_if_focus_on",
      "analysis_of_pass_condition",
      "analysis_of_failure_examples",
      "answer",
    ]);
    assert.equal(yes.answer, true);
    assert.equal(no.answer, false);
  });
});

Deno.test("startScriptedServer() reports usage overrides and returns token ids with logprobs when asked", async () => {
  await withServer(
    {
      handler: () => ({ content: "ok", tokenIds: [5, 6], usage: { promptTokens: 10, completionTokens: 2 } }),
    },
    async (server) => {
      const r = await post(server, chat("m", "hi", { logprobs: true }));
      assert.deepEqual(r.json.usage, { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 });
      const choice = r.json.choices[0] as unknown as {
        token_ids: number[];
        logprobs: { content: unknown[] };
      };
      assert.deepEqual(choice.token_ids, [5, 6]);
      assert.equal(choice.logprobs.content.length, 2);
    },
  );
});
