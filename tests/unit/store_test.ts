import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { FsStore } from "../../store/fs_store.ts";
import { getJson, parseRef, putJson, StoreError } from "../../store/mod.ts";

async function tempStore(): Promise<FsStore> {
  return new FsStore(await fs.mkdtemp(path.join(os.tmpdir(), "cm2-store-")));
}

Deno.test("FsStore.put() is content-addressed and idempotent", async () => {
  const store = await tempStore();
  const a = await putJson(store, { x: 1 });
  const b = await putJson(store, { x: 1 });
  const c = await putJson(store, { x: 2 });
  assert.deepEqual(a, b);
  assert.notEqual(a.sha256, c.sha256);
  assert.equal(a.uri, `cm2://sha256/${a.sha256}`);
  assert.deepEqual(await getJson(store, a), { x: 1 });
  await fs.rm(store.root, { recursive: true });
});

Deno.test("FsStore.get() detects a corrupted blob", async () => {
  const store = await tempStore();
  const ref = await putJson(store, { hello: "world" });
  await fs.writeFile(store.locate(ref), '{"hello":"World"}');
  await assert.rejects(() => store.get(ref), StoreError);
  await fs.rm(store.root, { recursive: true });
});

Deno.test("FsStore rejects refs and names that would escape the root", async () => {
  const store = await tempStore();
  const bad = { uri: "cm2://sha256/../../etc/passwd", sha256: "../../etc/passwd", bytes: 1 };
  await assert.rejects(() => store.get(bad));
  assert.throws(() => parseRef({ uri: `cm2://sha256/${"a".repeat(64)}`, sha256: "b".repeat(64), bytes: 0 }));
  const ref = await putJson(store, 1);
  for (const name of ["../x", "a/../../b", "/abs", "a//b", "", "a/./b"]) {
    await assert.rejects(() => store.setName(name, ref), StoreError, name);
  }
  await fs.rm(store.root, { recursive: true });
});

Deno.test("FsStore.setNameIfAbsent() keeps the first writer", async () => {
  const store = await tempStore();
  const a = await putJson(store, "a");
  const b = await putJson(store, "b");
  const results = await Promise.all([
    store.setNameIfAbsent("runs/demo/it-0", a),
    store.setNameIfAbsent("runs/demo/it-0", b),
  ]);
  const winner = await store.getName("runs/demo/it-0");
  assert.ok(winner);
  assert.deepEqual(results[0], winner);
  assert.deepEqual(results[1], winner);
  assert.deepEqual(await store.listNames("runs/demo/"), ["runs/demo/it-0"]);
  assert.equal(await store.getName("runs/other"), undefined);
  await fs.rm(store.root, { recursive: true });
});
