/**
 * Episode states in the store (`store/episodes.ts`): every state an episode passes through, saved as deltas and
 * loaded by a fresh reader that shares no cache with the writer, equals the engine's in-memory state; a delta is
 * the step's new messages plus bounded bookkeeping; a final state is a snapshot; old whole (v1) states still load. Episodes: the sample dataset's records, driven by the engine with in-process model doubles.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import {
  advance,
  completeJudge,
  completePolicy,
  completeTools,
  NO_CACHES,
  simulationOf,
} from "../../core/engine.ts";
import { type EpisodeState, startEpisode, toolResultFromSimulation } from "../../core/episode.ts";
import { judgeRoundRequests, type JudgeVerdict, verdictFromResult } from "../../core/episode_judge.ts";
import type { ChatResult } from "../../core/llm_types.ts";
import { parseSimulation } from "../../core/simulator.ts";
import { CachedStore } from "../../store/cached.ts";
import { DELTA_SCHEMA, EPISODE_SCHEMA, EpisodeStates, type StoredEpisode } from "../../store/episodes.ts";
import { FsStore } from "../../store/fs_store.ts";
import { getJson, putJson } from "../../store/mod.ts";
import { judgeVerdict } from "../scripted_server.ts";
import { sampleRecords, withoutChecks } from "../harness/training.ts";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const judge = { model: "judge", hash: sha256 };
const usage = { promptTokens: 0, completionTokens: 0, latencyMs: 0 };
const reply = (content: string, toolCalls: ChatResult["toolCalls"] = []): ChatResult => ({
  content,
  toolCalls,
  finishReason: toolCalls.length ? "tool_calls" : "stop",
  usage,
  model: "policy",
});

/** Test double of the policy: the reference's k-th assistant message at step k. */
function referenceStep(state: EpisodeState): ChatResult {
  const k = state.messages.filter((m) => m.role === "assistant").length;
  const ref = state.record.messages.filter((m) => m.role === "assistant")[k];
  if (!ref) return reply("Done.");
  return reply(
    ref.content,
    ref.tool_calls.map((c, i) => ({ ...c, id: `c${k}_${i}`, type: "function" as const })),
  );
}

Deno.test("stored episode states: deltas load back exactly, hold only what a step adds, and end as snapshots", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-episodes-"));
  try {
    const store = new FsStore(dir);
    const writer = new EpisodeStates(new CachedStore(store));
    // Without program checks (nor absent-focus answers), so the scripted judge below answers every cell (and the numbers stay comparable).
    const records = (await sampleRecords()).map(withoutChecks);
    let written = 0;
    let content = 0;
    let v1 = 0;
    let deltaBytes = 0;
    let midSnapshots = 0;
    let worstOverhead = 0;
    let steps = 0;
    for (const [i, record] of records.entries()) {
      const recordRef = await putJson(store, record);
      const owner = { group: `runs/t/it-0/task-${i}`, episode: `ep-${i}` };
      let base = null;
      let state = startEpisode(record, {
        judge: { mode: i % 2 ? "incremental" : "exhaustive", skipAbsentFocus: false },
      });
      let before = 0;
      for (;;) {
        state = advance(state, NO_CACHES, judge).state;
        const saved = await writer.save(state, { owner, recordRef, base });
        const raw = await store.get(saved.ref);
        written += raw.byteLength;
        v1 += JSON.stringify(state).length;
        const added = JSON.stringify(state.messages.slice(before)).length +
          JSON.stringify(state.meta.slice(before)).length;
        const kind = (await getJson<StoredEpisode>(store, saved.ref)).schema;
        if (kind === DELTA_SCHEMA) {
          deltaBytes += raw.byteLength;
          worstOverhead = Math.max(worstOverhead, raw.byteLength - added);
        } else if (base && state.phase !== "done") midSnapshots += raw.byteLength;
        content += JSON.stringify(state.messages.slice(before)).length +
          JSON.stringify(state.meta.slice(before)).length;
        before = state.messages.length;
        steps++;
        // A reader that shares nothing with the writer rebuilds the same state.
        const fresh = await new EpisodeStates(new CachedStore(store)).load(saved.ref);
        assert.deepEqual(fresh.state, state);
        assert.deepEqual(fresh.owner, owner);
        base = saved;
        if (state.phase === "done") {
          const stored = await getJson<StoredEpisode>(store, saved.ref);
          assert.equal(stored.schema, EPISODE_SCHEMA, "a final state is a snapshot");
          break;
        }
        if (state.phase === "policy") state = completePolicy(state, referenceStep(state));
        else if (state.phase === "tools") {
          state = completeTools(
            state,
            state.toolResults!.flatMap((r, k) => {
              if (r) return [];
              const sim = simulationOf(state, state.pendingCalls[k]!.index);
              return [toolResultFromSimulation(sim.call, parseSimulation(reply('{"ok":true}')))];
            }),
          );
        } else {
          const tasks = judgeRoundRequests(state, judge);
          const verdicts = new Map<number, JudgeVerdict>(
            tasks.map((t, k) => [k, verdictFromResult(t, reply(JSON.stringify(judgeVerdict(k % 3 !== 0))))]),
          );
          state = completeJudge(state, verdicts);
        }
      }
    }
    assert.ok(steps > records.length * 3, `only ${steps} saved steps`);
    const numbers = JSON.stringify({ steps, written, content, v1, deltaBytes, midSnapshots, worstOverhead });
    console.log(numbers);
    // A delta holds the step's new messages plus bounded bookkeeping (turn verdicts, counters, pending calls).
    assert.ok(worstOverhead <= 1_024, numbers);
    // Intermediate snapshots are paid for by the deltas before them.
    assert.ok(midSnapshots <= deltaBytes / 2, numbers);
    // Against the whole state with its record and tools (the v1 form), at least 10× fewer bytes.
    assert.ok(written * 10 <= v1, numbers);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("stored episode states: a whole v1 state (written before v2) still loads", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-episodes-"));
  try {
    const store = new FsStore(dir);
    const records = await sampleRecords();
    const state = startEpisode(records[0]!);
    const ref = await putJson(store, state);
    const states = new EpisodeStates(new CachedStore(store));
    const loaded = await states.load(ref);
    assert.deepEqual(loaded.state, state);
    assert.equal(loaded.head, null);
    // An episode in flight across the upgrade goes on: its next state is a v2 snapshot with its record by ref.
    const next = completePolicy(loaded.state, reply("Hello"));
    const owner = { group: "runs/t/it-0/task-0", episode: "ep" };
    const saved = await states.save(next, { owner, recordRef: loaded.recordRef, base: loaded });
    assert.equal((await getJson<StoredEpisode>(store, saved.ref)).schema, EPISODE_SCHEMA);
    assert.deepEqual((await new EpisodeStates(new CachedStore(store)).load(saved.ref)).state, next);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
