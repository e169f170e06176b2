/**
 * `cm2 store gc` after a real training run: a dry run deletes nothing; the collection removes only intermediate
 * episode states of finished iterations; every final state, the rewards and the metrics still load and give the
 * same verdicts; the states of an iteration without metrics (running or interrupted) are kept.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { episodeVerdicts } from "../../core/episode_judge.ts";
import { startEpisode } from "../../core/episode.ts";
import { workflowIds } from "../../core/names.ts";
import { CachedStore } from "../../store/cached.ts";
import { EpisodeStates } from "../../store/episodes.ts";
import { collectGarbage } from "../../store/gc.ts";
import { getJson, putJson, type Ref } from "../../store/mod.ts";
import { ROOT } from "../../scripts/paths.ts";
import { trainingRun } from "../../workflows/training.ts";
import { useTemporal } from "../harness/temporal.ts";
import { sampleRecords, scriptedConfig, trainingStack } from "../harness/training.ts";

async function blobs(stack: { store: { listBlobs(): AsyncIterable<Ref> } }): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const r of stack.store.listBlobs()) out.add(r.sha256);
  return out;
}

Deno.test({
  name: "store gc collects only the intermediate states of finished iterations; runs stay readable",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const temporal = await useTemporal();
    const stack = await trainingStack(temporal.address);
    const stop = await stack.startWorkers();
    try {
      const name = `gc-${crypto.randomUUID().slice(0, 6)}`;
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: 1,
        tasksPerIteration: 2,
        groupSize: 3,
        episodeConcurrency: 6,
      }, name);
      await stack.client.workflow.execute(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(config.name),
        args: [{ config }],
      });
      // An interrupted iteration: a state chain of an iteration that has no metrics.
      const states = new EpisodeStates(new CachedStore(stack.store));
      const [record] = await sampleRecords();
      const recordRef = await putJson(stack.store, record);
      const owner = { group: `runs/${name}/it-7/task-0`, episode: "x" };
      const first = await states.save(startEpisode(record!), { owner, recordRef, base: null });
      const unfinished = { ...first.state, contextTokens: first.state.contextTokens + 1 };
      const second = await states.save(unfinished, { owner, recordRef, base: first });

      const metricsRef = (await stack.store.getName(`runs/${name}/metrics/it-0`))!;
      const metrics = await getJson<{ rewards: Ref }>(stack.store, metricsRef);
      const rewards = await getJson<{ groups: { episodes: { state: Ref }[] }[] }>(
        stack.store,
        metrics.rewards,
      );
      const finals = rewards.groups.flatMap((g) => g.episodes.map((e) => e.state));
      const verdictsOf = async () =>
        await Promise.all(finals.map(async (ref) => {
          const { state } = await new EpisodeStates(new CachedStore(stack.store)).load(ref);
          return episodeVerdicts(state);
        }));
      const before = await verdictsOf();
      const all = await blobs(stack);

      const dry = await collectGarbage(stack.store, { dryRun: true });
      assert.ok(dry.collectable > 0, JSON.stringify(dry));
      assert.equal(dry.deleted, 0);
      assert.equal(dry.keptUnfinished, 2, "the interrupted iteration's two states are kept");
      assert.equal(dry.finalStates, finals.length);
      assert.deepEqual(await blobs(stack), all, "a dry run deletes nothing");

      const real = await collectGarbage(stack.store, { dryRun: false });
      assert.equal(real.deleted, dry.collectable);
      assert.deepEqual(Object.keys(real.byIteration), [`${name}/it-0`]);
      const after = await blobs(stack);
      assert.equal(after.size, all.size - real.deleted);
      for (const ref of [...finals, metricsRef, metrics.rewards, first.ref, second.ref]) {
        assert.ok(after.has(ref.sha256), `${ref.uri} was kept`);
      }
      assert.deepEqual(await verdictsOf(), before, "final states load alone and give the same verdicts");
      const again = await collectGarbage(stack.store, { dryRun: false });
      assert.equal(again.collectable, 0, "a second collection finds nothing");

      // The command line, as a user runs it.
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          path.join(ROOT, "client.ts"),
          "store",
          "gc",
          "--dry-run",
          "--store",
          stack.storeRoot,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.match(text, /0 collectable .* 2 kept for unfinished iterations; nothing deleted \(dry run\)/);
    } finally {
      await stop();
      await stack.close();
      await temporal.release();
    }
  },
});
