import assert from "node:assert/strict";
import { endpointUrlProblem, parseRunConfig } from "../../core/config.ts";
import { redactKeyLike, redactSecret } from "../../core/redact.ts";

Deno.test("redactSecret removes every fragment of the key a provider may echo", () => {
  const key = "sk-canary-Zq81xLwP0aTm";
  const echoed = `Incorrect API key provided: ${key.slice(0, 8)}************${key.slice(-4)}. Also ${key}.`;
  const out = redactSecret(echoed, key);
  assert.doesNotMatch(out, /sk-canar/);
  assert.ok(!out.includes(key.slice(0, 8)) && !out.includes(key));
  assert.match(out, /Incorrect API key provided: \[redacted\]/);
  assert.equal(redactSecret("nothing to see", key), "nothing to see");
  assert.equal(redactSecret("abc", undefined), "abc");
});

Deno.test("redactKeyLike removes bearer tokens, sk- keys and key=value pairs", () => {
  const out = redactKeyLike(
    'Authorization: Bearer abc.def-123456 key sk-proj-ABCDEF123456 {"api_key": "hunter2222"}',
  );
  assert.doesNotMatch(out, /abc\.def-123456|ABCDEF123456|hunter2222/);
});

Deno.test("endpoint URLs: http(s) only, no credentials, a hint for a missing scheme", () => {
  assert.equal(endpointUrlProblem("http://127.0.0.1:8766/v1"), null);
  assert.equal(endpointUrlProblem("https://api.openai.com/v1"), null);
  assert.match(endpointUrlProblem("localhost:8000/v1")!, /did you mean http:\/\/localhost:8000\/v1\?/);
  assert.match(endpointUrlProblem("ftp://host/v1")!, /only http and https/);
  assert.match(endpointUrlProblem("javascript://alert(1)")!, /only http and https/);
  assert.match(endpointUrlProblem("https://user:secret@host/v1")!, /credentials/);
  const parsed = parseRunConfig({ models: { judge: { baseURL: "https://user:s3cretvalue@host/v1" } } });
  assert.equal(parsed.ok, false);
  if (!parsed.ok) {
    const text = JSON.stringify(parsed.issues);
    assert.match(text, /models\.judge\.baseURL/);
    assert.doesNotMatch(text, /s3cretvalue/, "the error does not repeat the secret");
  }
  for (const raw of [null, 3, "x", []]) {
    const r = parseRunConfig(raw);
    assert.equal(r.ok, false, JSON.stringify(raw));
  }
});
