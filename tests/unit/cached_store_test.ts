import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { CachedStore } from "../../store/cached.ts";
import { FsStore } from "../../store/fs_store.ts";
import type { ArtifactStore } from "../../store/mod.ts";

/** A real file store that counts the reads that reach it. */
async function countingStore(): Promise<{ store: ArtifactStore; reads: () => number }> {
  const fsStore = new FsStore(await fs.mkdtemp(path.join(os.tmpdir(), "cm2-cached-")));
  let n = 0;
  const store: ArtifactStore = {
    url: fsStore.url,
    listBlobs: () => fsStore.listBlobs(),
    deleteBlob: (ref) => fsStore.deleteBlob(ref),
    put: (data) => fsStore.put(data),
    get: (ref) => (n++, fsStore.get(ref)),
    has: (ref) => fsStore.has(ref),
    setName: (name, ref) => fsStore.setName(name, ref),
    setNameIfAbsent: (name, ref) => fsStore.setNameIfAbsent(name, ref),
    getName: (name) => (n++, fsStore.getName(name)),
    listNames: (prefix) => fsStore.listNames(prefix),
    locate: (ref) => fsStore.locate(ref),
  };
  return { store, reads: () => n };
}

Deno.test("CachedStore: blobs written or read once are served from the cache; same bytes as putJson", async () => {
  const { store, reads } = await countingStore();
  const c = new CachedStore(store);
  const ref = await c.writeJson({ a: 1 });
  assert.deepEqual(ref, await store.put(new TextEncoder().encode(JSON.stringify({ a: 1 }))));
  assert.deepEqual(await c.readJson(ref), { a: 1 });
  assert.equal(reads(), 0, "written by this worker: no store read");
  const cold = new CachedStore(store);
  await cold.readJson(ref);
  await cold.readJson(ref);
  assert.equal(reads(), 1, "read once, then cached");
  const m1 = await cold.memo<{ a: number }>(ref);
  assert.equal(await cold.memo(ref), m1, "memo parses once and shares the value");
});

Deno.test("CachedStore: the first writer of a name wins, and a settled name costs no store read", async () => {
  const { store, reads } = await countingStore();
  const a = new CachedStore(store);
  const b = new CachedStore(store);
  const first = await a.settle("judge-cache/ab/abc", await a.writeJson("first"));
  const second = await b.settle("judge-cache/ab/abc", await b.writeJson("second"));
  assert.equal(first.text, JSON.stringify("first"));
  assert.deepEqual(second.winner, first.winner, "the later writer gets the first one's value");
  assert.equal(second.text, JSON.stringify("first"));
  assert.ok(b.isSettled("judge-cache/ab/abc"));
  const before = reads();
  assert.equal(await b.settledText("judge-cache/ab/abc"), JSON.stringify("first"));
  assert.equal(reads(), before, "remembered: no store read");
  assert.equal(await new CachedStore(store).settledText("judge-cache/none"), undefined);
});
