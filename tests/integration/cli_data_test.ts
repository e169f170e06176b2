/**
 * `cm2 data import` / `data filter` as a user runs them (client.ts in a child process, a temp store): datasets are
 * versioned, a failed import changes nothing and exits non-zero, rejected records make the exit non-zero unless
 * allowed, a name the store cannot hold fails in one line before any blob is written, and `filter --out` does not
 * write an empty dataset unless asked.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "../../scripts/paths.ts";
import { DatasetError, datasetRef, loadManifest, saveDataset } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";
import { sampleRecords } from "../harness/training.ts";

const SAMPLE = path.join(ROOT, "data/sample/tooltalk_sample.jsonl");

async function cm2(store: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path.join(ROOT, "client.ts"), ...args, "--store", store],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

async function count(dir: string): Promise<number> {
  let n = 0;
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) {
    if (e.isFile()) n++;
  }
  return n;
}

Deno.test("data import: versions, a failed import changes nothing, rejects and bad names exit non-zero", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-cli-data-"));
  try {
    const store = new FsStore(path.join(dir, "store"));
    const ok = await cm2(store.root, "data", "import", SAMPLE, "--name", "mine");
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /dataset mine v1 →/);
    const v1 = (await datasetRef(store, "mine"))!;
    const first = await loadManifest(store, v1);

    // An empty file: exit 1, the dataset keeps its records and its version.
    const empty = path.join(dir, "empty.jsonl");
    await fs.writeFile(empty, "");
    const none = await cm2(store.root, "data", "import", empty, "--name", "mine");
    assert.equal(none.code, 1);
    assert.match(none.err, /nothing imported .* dataset mine is unchanged/);
    assert.deepEqual(await datasetRef(store, "mine"), v1);

    // One good record and one bad line: the good one is saved as v2; exit 1 unless --allow-rejects.
    const lines = (await fs.readFile(SAMPLE, "utf8")).trim().split("\n");
    const mixed = path.join(dir, "mixed.jsonl");
    await fs.writeFile(mixed, `${lines[0]}\n{"uuid": 3, "messages": "no"}\n`);
    const rejected = await cm2(store.root, "data", "import", mixed, "--name", "mine");
    assert.equal(rejected.code, 1, rejected.out);
    assert.match(rejected.err, /1 record\(s\) rejected .*--allow-rejects/);
    const v2 = await loadManifest(store, (await datasetRef(store, "mine"))!);
    assert.equal(v2.count, 1);
    assert.equal(v2.version, 2);
    assert.deepEqual(v2.previous, v1, "the previous version stays reachable");
    assert.deepEqual(await store.getName("datasets/mine/v1"), v1);
    const allowed = await cm2(store.root, "data", "import", mixed, "--name", "mine", "--allow-rejects");
    assert.equal(allowed.code, 0, allowed.err);
    assert.equal(first.count, lines.length);

    // An empty tool response: rejected with its reason, unless allowed, which the manifest keeps for runs.
    const rec = JSON.parse(lines.find((l) => l.includes('"role": "tool"') || l.includes('"role":"tool"'))!);
    const i = rec.messages.findIndex((m: { role: string }) => m.role === "tool");
    rec.messages[i].content = "";
    rec.uuid = "empty-tool-response";
    const emptyTool = path.join(dir, "empty_tool.jsonl");
    await fs.writeFile(emptyTool, JSON.stringify(rec) + "\n");
    const refused = await cm2(store.root, "data", "import", emptyTool, "--name", "et");
    assert.equal(refused.code, 1);
    assert.match(
      refused.err,
      /line 1 \(uuid empty-tool-response\): messages\[\d+\]\.content: Tool response is empty/,
    );
    const allowedEmpty = await cm2(
      store.root,
      "data",
      "import",
      emptyTool,
      "--name",
      "et",
      "--allow-empty-tool-responses",
    );
    assert.equal(allowedEmpty.code, 0, allowedEmpty.err);
    const et = await loadManifest(store, (await datasetRef(store, "et"))!);
    assert.deepEqual([et.count, et.validation], [1, { allowEmptyToolResponses: true }]);

    // A name the store cannot hold: one line, exit 2, nothing written.
    const before = await count(store.root);
    for (const name of ["../escape", "x".repeat(260)]) {
      const bad = await cm2(store.root, "data", "import", SAMPLE, "--name", name);
      assert.equal(bad.code, 2, bad.err);
      assert.equal(bad.err.trim().split("\n").length, 1, bad.err);
      assert.match(bad.err, /^error: Dataset name .* cannot be stored/);
    }
    assert.equal(await count(store.root), before, "no blob or temp file was left behind");

    // filter: think_tags skipped for data without reasoning traces; rejected records named, with --rejected
    // as JSON lines; --out does not write an empty dataset unless asked.
    const rejectedFile = path.join(dir, "rejected.jsonl");
    const kept = await cm2(
      store.root,
      "data",
      "filter",
      "mine",
      "--out",
      "clean",
      "--rejected",
      rejectedFile,
    );
    assert.equal(kept.code, 0, kept.err);
    assert.match(kept.out, /think_tags +skipped \(no <think> tags in the data/);
    assert.ok(await datasetRef(store, "clean"));
    const all = await cm2(store.root, "data", "filter", "mine", "--out", "none", "--enable", "think_tags");
    assert.equal(all.code, 1);
    assert.match(all.out, /rejected \S+: think_tags at /);
    assert.match(all.err, /not writing an empty dataset none/);
    assert.equal(await datasetRef(store, "none"), undefined);
    const forced = await cm2(
      store.root,
      "data",
      "filter",
      "mine",
      "--enable",
      "think_tags",
      "--rejected",
      rejectedFile,
    );
    assert.equal(forced.code, 0, forced.err);
    const rejectedLines = (await fs.readFile(rejectedFile, "utf8")).trim().split("\n").map((l) =>
      JSON.parse(l) as { uuid: unknown; reasons: unknown[] }
    );
    assert.ok(
      rejectedLines.length > 0 &&
        rejectedLines.every((l) => typeof l.uuid === "string" && l.reasons.length > 0),
    );
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("saveDataset never replaces a dataset with records by an empty one", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-ds-"));
  try {
    const store = new FsStore(dir);
    const records = await sampleRecords();
    const sources = [{ file: "t", format: "t", imported: 1, errors: 0 }];
    const { ref } = await saveDataset(store, "d", records.slice(0, 2), { sources });
    await assert.rejects(() => saveDataset(store, "d", [], { sources, allowEmpty: true }), DatasetError);
    await assert.rejects(() => saveDataset(store, "fresh", [], { sources }), DatasetError);
    assert.deepEqual(await datasetRef(store, "d"), ref);
    const e = await saveDataset(store, "fresh", [], { sources, allowEmpty: true });
    assert.equal(e.manifest.count, 0);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("data split: three disjoint datasets, the RL one ending with the held-out records, counts stored", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-cli-split-"));
  try {
    const store = new FsStore(path.join(dir, "store"));
    assert.equal((await cm2(store.root, "data", "import", SAMPLE, "--name", "pool")).code, 0);
    const r = await cm2(store.root, "data", "split", "pool", "--out", "s", "--held-out", "2", "--rl", "3");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /10 records, 7 complex \(≥ 2 user turns and ≥ 2 distinct tools\), seed 42/);
    assert.match(r.out, /"dataset": \{"path": "datasets\/s-rl", "heldOut": 2\}/);
    const load = async (name: string) => {
      const { loadAllRecords } = await import("../../store/datasets.ts");
      return (await loadAllRecords(store, await loadManifest(store, (await datasetRef(store, name))!))).map((
        x,
      ) => x.uuid);
    };
    const [sft, rl, held] = [await load("s-sft"), await load("s-rl"), await load("s-heldout")];
    assert.deepEqual([sft.length, rl.length, held.length], [5, 5, 2]);
    assert.deepEqual(rl.slice(-2), held, "the RL dataset ends with the held-out records");
    assert.equal(new Set([...sft, ...rl]).size, 10, "SFT and RL (with held-out) are disjoint");
    const report = JSON.parse(
      new TextDecoder().decode(await store.get((await store.getName("splits/s"))!)),
    );
    assert.deepEqual(report.counts, { records: 10, complex: 7, sft: 5, rl: 3, heldOut: 2, unused: 0 });
    assert.deepEqual(report.uuids.heldOut, held);
    // another seed keeps the held-out records of this dataset version
    const again = await cm2(
      store.root,
      "data",
      "split",
      "pool",
      "--out",
      "t",
      "--held-out",
      "2",
      "--seed",
      "7",
    );
    assert.equal(again.code, 0, again.err);
    assert.deepEqual(await load("t-heldout"), held);
    // a bad flag is one line and exit 1, nothing written
    const bad = await cm2(store.root, "data", "split", "pool", "--out", "u", "--rl", "-2");
    assert.equal(bad.code, 1);
    assert.match(bad.err, /Split rule rl is -2/);
    assert.equal(await datasetRef(store, "u-rl"), undefined);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
