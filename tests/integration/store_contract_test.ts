/**
 * The store contract, one suite run against every implementation: `FsStore` on a temp directory and `S3Store`
 * against a real S3-protocol server (moto, started here on 127.0.0.1). The Python trainer runs the same
 * contract in `trainer/tests/test_store_contract.py`.
 */
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { FsStore } from "../../store/fs_store.ts";
import { getJson, parseRef, putJson, type Ref, StoreError } from "../../store/mod.ts";
import type { ArtifactStore } from "../../store/mod.ts";
import { canonicalStoreUrl, openStore, parseStoreUrl } from "../../store/open.ts";
import { startS3Server } from "../harness/s3_server.ts";

interface Backend {
  /** A fresh, empty store (with an optional key prefix). */
  open(prefix?: string): Promise<ArtifactStore>;
  /** Overwrites a blob's bytes behind the store's back. */
  tamper(store: ArtifactStore, ref: Ref, bytes: string): Promise<void>;
  /** The raw bytes of a pointer. */
  rawName(store: ArtifactStore, name: string): Promise<string>;
}

const never = { sanitizeResources: false, sanitizeOps: false };

async function contract(t: Deno.TestContext, b: Backend): Promise<void> {
  await t.step("put is content-addressed and idempotent; get verifies and returns the bytes", async () => {
    const store = await b.open();
    const a = await putJson(store, { x: 1 });
    const again = await putJson(store, { x: 1 });
    const c = await putJson(store, { x: 2 });
    assert.deepEqual(a, again);
    assert.notEqual(a.sha256, c.sha256);
    assert.equal(a.uri, `cm2://sha256/${a.sha256}`);
    assert.deepEqual(await getJson(store, a), { x: 1 });
    assert.equal(await store.has(a), true);
    const big = new Uint8Array(3 * 2 ** 20).map((_, i) => i % 251);
    const bigRef = await store.put(big);
    assert.deepEqual(await store.get(bigRef), big);
  });
  await t.step("a missing blob and a corrupted blob are errors", async () => {
    const store = await b.open();
    const ref = await putJson(store, { hello: "world" });
    const missing = await putJson(await b.open(), { not: "here" });
    assert.equal(await store.has(missing), false);
    await assert.rejects(
      () => store.get(missing),
      (e: Error) => e instanceof StoreError && /missing/.test(e.message),
    );
    await b.tamper(store, ref, '{"hello":"World"}');
    await assert.rejects(
      () => store.get(ref),
      (e: Error) => e instanceof StoreError && /corrupt/.test(e.message),
    );
  });
  await t.step("refs and names that would escape are refused", async () => {
    const store = await b.open();
    const bad = { uri: "cm2://sha256/../../etc/passwd", sha256: "../../etc/passwd", bytes: 1 };
    await assert.rejects(() => store.get(bad));
    assert.throws(() =>
      parseRef({ uri: `cm2://sha256/${"a".repeat(64)}`, sha256: "b".repeat(64), bytes: 0 })
    );
    const ref = await putJson(store, 1);
    for (const name of ["../x", "a/../../b", "/abs", "a//b", "", "a/./b"]) {
      await assert.rejects(() => store.setName(name, ref), StoreError, name);
    }
  });
  await t.step(
    "setName overwrites; pointers are compact JSON refs; listNames is sorted by prefix",
    async () => {
      const store = await b.open();
      const a = await putJson(store, "a");
      const c = await putJson(store, "c");
      assert.equal(await store.getName("runs/r/x"), undefined);
      await store.setName("runs/r/x", a);
      await store.setName("runs/r/x", c);
      await store.setName("runs/r/a", a);
      await store.setName("runs/q/a", a);
      assert.deepEqual(await store.getName("runs/r/x"), c);
      assert.equal(
        await b.rawName(store, "runs/r/x"),
        JSON.stringify({ uri: c.uri, sha256: c.sha256, bytes: c.bytes }),
      );
      assert.deepEqual(await store.listNames("runs/r/"), ["runs/r/a", "runs/r/x"]);
      assert.deepEqual(await store.listNames("runs/"), ["runs/q/a", "runs/r/a", "runs/r/x"]);
    },
  );
  await t.step("setNameIfAbsent keeps the first writer, also when 8 writers race", async () => {
    const store = await b.open();
    const refs = await Promise.all(Array.from({ length: 8 }, (_, i) => putJson(store, `v${i}`)));
    const results = await Promise.all(refs.map((r) => store.setNameIfAbsent("cache/k", r)));
    const winner = await store.getName("cache/k");
    assert.ok(winner);
    for (const r of results) assert.deepEqual(r, winner);
    assert.deepEqual(await store.setNameIfAbsent("cache/k", refs[0]!), winner);
  });
  await t.step("a prefixed store keeps to its prefix", async () => {
    const store = await b.open("team/a");
    const ref = await putJson(store, { p: 1 });
    await store.setName("x", ref);
    assert.match(store.locate(ref), /team\/a\/objects\/sha256\//);
    assert.deepEqual(await store.listNames(""), ["x"]);
    assert.deepEqual(await getJson(openStore(store.url, "/"), ref), { p: 1 });
  });
}

Deno.test("store contract: FsStore", async (t) => {
  const dirs: string[] = [];
  try {
    await contract(t, {
      async open(prefix) {
        const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-store-"));
        dirs.push(dir);
        return new FsStore(prefix ? path.join(dir, prefix) : dir);
      },
      tamper: (store, ref, bytes) => fs.writeFile(store.locate(ref), bytes),
      rawName: (store, name) =>
        fs.readFile(path.join((store as FsStore).root, "names", `${name}.json`), "utf8"),
    });
  } finally {
    for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
  }
});

Deno.test({
  name: "store contract: S3Store against a real S3-protocol server (moto) on 127.0.0.1",
  ...never,
  async fn(t) {
    const s3 = await startS3Server();
    const key = (store: ArtifactStore, rest: string) => {
      const loc = parseStoreUrl(store.url, "/");
      if (loc.kind !== "s3") throw new Error("not s3");
      return { Bucket: loc.bucket, Key: loc.prefix ? `${loc.prefix}/${rest}` : rest };
    };
    try {
      await contract(t, {
        open: async (prefix) => openStore(await s3.newStoreUrl(prefix), "/"),
        async tamper(store, ref, bytes) {
          const k = key(store, `objects/sha256/${ref.sha256.slice(0, 2)}/${ref.sha256}`);
          await s3.client.send(new PutObjectCommand({ ...k, Body: new TextEncoder().encode(bytes) }));
        },
        async rawName(store, name) {
          const out = await s3.client.send(new GetObjectCommand(key(store, `names/${name}.json`)));
          return await out.Body!.transformToString();
        },
      });
    } finally {
      await s3.stop();
    }
  },
});

Deno.test("store URLs: file, relative, plain paths and s3 parse; bad ones name the URL and the forms", () => {
  assert.deepEqual(parseStoreUrl("file:.cm2/store", "/srv/cm2"), {
    kind: "file",
    root: "/srv/cm2/.cm2/store",
  });
  assert.deepEqual(parseStoreUrl("file:///data/s", "/x"), { kind: "file", root: "/data/s" });
  assert.deepEqual(parseStoreUrl("rel/s", "/srv"), { kind: "file", root: "/srv/rel/s" });
  assert.equal(canonicalStoreUrl("file:.cm2/store", "/srv/cm2"), "file:///srv/cm2/.cm2/store");
  assert.deepEqual(parseStoreUrl("s3://my-bucket/runs/a/?endpoint=http://127.0.0.1:9000", "/"), {
    kind: "s3",
    bucket: "my-bucket",
    prefix: "runs/a",
    endpoint: "http://127.0.0.1:9000",
  });
  assert.equal(
    canonicalStoreUrl("s3://my-bucket/p?region=eu-west-1", "/"),
    "s3://my-bucket/p?region=eu-west-1",
  );
  for (
    const [url, why] of [
      ["ftp://host/x", /unsupported scheme/],
      ["s3://", /bucket/],
      ["s3://AKIA:secretvalue@bucket/x", /credentials/],
      ["s3://bucket/x?token=1", /unknown parameter token/],
      ["", /empty/],
    ] as const
  ) {
    assert.throws(() => parseStoreUrl(url, "/"), (e: Error) => {
      assert.match(e.message, why);
      assert.match(e.message, /expected file:\/\/\/abs\/dir/);
      assert.doesNotMatch(e.message, /secretvalue/);
      return true;
    });
  }
});

Deno.test("config: store.url defaults to file:.cm2/store; the older { root } form reads as a URL", async () => {
  const { parseRunConfig } = await import("../../core/config.ts");
  const plain = parseRunConfig({});
  assert.ok(plain.ok);
  assert.equal(plain.config.store.url, "file:.cm2/store");
  const legacy = parseRunConfig({ store: { kind: "fs", root: "/data/cm2" } });
  assert.ok(legacy.ok);
  assert.deepEqual(legacy.config.store, { url: "/data/cm2" });
  const s3 = parseRunConfig({ store: { url: "s3://bucket/p" } });
  assert.ok(s3.ok);
  assert.equal(s3.config.store.url, "s3://bucket/p");
  assert.equal(parseRunConfig({ store: { url: "" } }).ok, false);
  assert.equal(parseRunConfig({ store: { url: "x", extra: 1 } }).ok, false);
});
