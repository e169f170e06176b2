/**
 * The codec endpoint for the Temporal Web UI (`ui/codec.ts`), over real HTTP on 127.0.0.1 and a real store: a
 * policy step's payload comes back with what the step said beside its ref; secrets in a blob never come back;
 * payloads that are not cm2's JSON, and refs that cannot be read, come back as they were; CORS answers only the
 * UI's origins.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { FsStore } from "../../store/fs_store.ts";
import { putJson } from "../../store/mod.ts";
import { codecHandler, decodePayload, uiOrigins, type WirePayload } from "../../ui/codec.ts";
import { storedPolicyStep as policyStepResult } from "../harness/stored_step.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const b64 = (s: string) => btoa(String.fromCharCode(...enc.encode(s)));
const unb64 = (s: string) => dec.decode(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
const jsonPayload = (value: unknown): WirePayload => ({
  metadata: { encoding: b64("json/plain") },
  data: b64(JSON.stringify(value)),
});

async function withStore(fn: (store: FsStore) => Promise<void>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-codec-"));
  try {
    await fn(new FsStore(dir));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

Deno.test("codec: a policy step's payload shows what the step said, beside its ref", async () => {
  await withStore(async (store) => {
    const { result, call, recorded } = await policyStepResult(store);
    const out = await decodePayload(store, jsonPayload(result));
    const shown = JSON.parse(unb64(out.data!));
    // The payload itself is unchanged; the ref gains its content.
    assert.deepEqual(shown.pending, result.pending);
    assert.equal(shown.stateRef.uri, result.stateRef.uri);
    const content = shown.stateRef.content;
    assert.equal(content.kind, "episode step");
    // The step's call, and its result (replayed from the record: the call is the recorded one).
    assert.equal(content.appended[0], `assistant: Let me look that up. ${call.name}(${call.arguments})`);
    assert.equal(content.appended[1], `tool: ${recorded}`);
    assert.equal(unb64(out.metadata!.encoding!), "json/plain");
  });
});

Deno.test("codec: secrets in a blob are not shown; long strings are clipped; refs past the budget stay bare", async () => {
  await withStore(async (store) => {
    const secret = "sk-canary-fakefake0000";
    const leaky = await putJson(store, {
      note: `api_key=${secret}`,
      header: `Bearer ${secret}`,
      long: "x".repeat(5000),
    });
    const out = await decodePayload(store, jsonPayload({ a: leaky, b: leaky }), {
      maxString: 100,
      maxRefs: 1,
      maxBlobBytes: 1 << 20,
      lastMessages: 3,
    });
    const text = unb64(out.data!);
    assert.ok(!text.includes("fakefake0000"), text);
    const shown = JSON.parse(text);
    assert.match(shown.a.content.long, /^x{100}… \(5000 chars\)$/);
    assert.equal(shown.b.content, undefined, "the second ref is past the budget of one");
    assert.equal(shown.b.uri, leaky.uri);
  });
});

Deno.test("codec: other payloads and unreadable refs come back as they were, with the reason", async () => {
  await withStore(async (store) => {
    const binary: WirePayload = { metadata: { encoding: b64("binary/plain") }, data: b64("\u0001\u0002") };
    assert.deepEqual(await decodePayload(store, binary), binary);
    const nullPayload: WirePayload = { metadata: { encoding: b64("binary/null") } };
    assert.deepEqual(await decodePayload(store, nullPayload), nullPayload);
    const broken: WirePayload = { metadata: { encoding: b64("json/plain") }, data: b64("{not json") };
    assert.deepEqual(await decodePayload(store, broken), broken);
    const missing = { uri: `cm2://sha256/${"ab".repeat(32)}`, sha256: "ab".repeat(32), bytes: 10 };
    const out = JSON.parse(unb64((await decodePayload(store, jsonPayload({ missing }))).data!));
    assert.match(out.missing.content, /^\(not readable: /);
    const notJson = await store.put(enc.encode("\u0000binary"));
    const out2 = JSON.parse(unb64((await decodePayload(store, jsonPayload([notJson]))).data!));
    assert.equal(out2[0].content, `(${notJson.bytes} bytes, not JSON)`);
  });
});

Deno.test("codec endpoint over HTTP: decode and encode (also under a namespace), CORS for the UI only, clear errors", async () => {
  await withStore(async (store) => {
    const handler = codecHandler(store, uiOrigins(8233));
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      async (req) => (await handler(req)) ?? new Response("not found", { status: 404 }),
    );
    const base = `http://127.0.0.1:${server.addr.port}`;
    try {
      const { result } = await policyStepResult(store);
      const body = JSON.stringify({ payloads: [jsonPayload(result)] });
      const ui = "http://localhost:8233";
      const pre = await fetch(`${base}/default/decode`, {
        method: "OPTIONS",
        headers: { origin: ui, "access-control-request-method": "POST" },
      });
      await pre.body?.cancel();
      assert.equal(pre.status, 204);
      assert.equal(pre.headers.get("access-control-allow-origin"), ui);
      assert.match(pre.headers.get("access-control-allow-headers")!, /x-namespace/);

      const res = await fetch(`${base}/default/decode`, {
        method: "POST",
        headers: { origin: ui, "content-type": "application/json", "x-namespace": "default" },
        body,
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("access-control-allow-origin"), ui);
      const decoded = (await res.json()).payloads as WirePayload[];
      assert.equal(JSON.parse(unb64(decoded[0]!.data!)).stateRef.content.kind, "episode step");

      const encoded = await fetch(`${base}/encode`, { method: "POST", body });
      assert.deepEqual(await encoded.json(), JSON.parse(body), "encode gives the payloads back unchanged");

      const stranger = await fetch(`${base}/decode`, {
        method: "POST",
        headers: { origin: "http://evil.test" },
        body,
      });
      await stranger.body?.cancel();
      assert.equal(stranger.headers.get("access-control-allow-origin"), null);

      const get = await fetch(`${base}/decode`);
      assert.equal(get.status, 405);
      assert.match(await get.text(), /POST only/);
      const bad = await fetch(`${base}/decode`, { method: "POST", body: "{" });
      assert.equal(bad.status, 400);
      assert.match(await bad.text(), /invalid JSON body/);
      const shape = await fetch(`${base}/decode`, { method: "POST", body: "{}" });
      assert.equal(shape.status, 400);
      assert.match(await shape.text(), /payloads/);
      const other = await fetch(`${base}/runs`);
      await other.body?.cancel();
      assert.equal(other.status, 404, "other paths are left to the caller");
    } finally {
      await server.shutdown();
    }
  });
});
