/**
 * Dataset preparation (`prepareDataset`) on a real file store: records whose first prompt is over
 * `cm2.limits.maxPromptTokens` are left out and counted, never dropped silently.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createDatasetActivities, describeDataset } from "../../activities/dataset.ts";
import { parseRunConfig } from "../../core/config.ts";
import { loadAllRecords, loadManifest } from "../../store/datasets.ts";
import { FsStore } from "../../store/fs_store.ts";

const SAMPLE = "data/sample/tooltalk_sample.jsonl";

Deno.test("prepareDataset() leaves out and counts records whose first prompt is over the limit", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-prepare-"));
  try {
    const lines = (await fs.readFile(SAMPLE, "utf8")).trim().split("\n");
    const long = JSON.parse(lines[0]!);
    long.uuid = "long-prompt";
    long.messages[0].content = "You are a careful assistant. ".repeat(600); // ~17 400 chars: ~4 350 tokens
    const file = path.join(dir, "data.jsonl");
    await fs.writeFile(file, [...lines, JSON.stringify(long)].join("\n") + "\n");
    const store = new FsStore(path.join(dir, "store"));
    const activities = createDatasetActivities({ store, root: Deno.cwd() });
    const prepare = async (limits: Record<string, number>) => {
      const parsed = parseRunConfig({ name: "prep", dataset: { path: file, heldOut: 2 }, cm2: { limits } });
      assert.ok(parsed.ok);
      return await activities.prepareDataset({ config: parsed.config });
    };

    const out = await prepare({});
    assert.deepEqual(out.summary, {
      records: 11,
      kept: 10,
      invalid: 0,
      unlabeled: 0,
      promptTooLong: 1,
      maxPromptTokens: 3500,
    });
    assert.equal(
      describeDataset(out.summary!),
      "10 of 11 records kept; left out: 1 with a first prompt over 3500 tokens",
    );
    assert.deepEqual([out.trainCount, out.valCount], [8, 2]);
    const records = await loadAllRecords(store, await loadManifest(store, out.datasetRef));
    assert.equal(records.length, 10);
    assert.ok(!records.some((r) => r.uuid === "long-prompt"));

    // a limit above every prompt keeps them all
    const roomy = await prepare({ maxPromptTokens: 100_000 });
    assert.equal(roomy.summary?.kept, 11);
    // a limit below every prompt is a clear error, not an empty run
    await assert.rejects(
      prepare({ maxPromptTokens: 10 }),
      /has no usable record \(0 of 11 records kept; left out: 11/,
    );
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
