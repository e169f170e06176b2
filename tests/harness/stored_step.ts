/**
 * One policy step as the store and a history hold it: an episode of a sample record started by the engine, the
 * policy's first step (the record's own first call, so the engine replays its recorded result) saved as a delta
 * on the first state. Returns the activity's result (`{stateRef, pending}`), the call and the recorded result.
 *
 * @module
 */
import { advance, completePolicy, NO_CACHES } from "../../core/engine.ts";
import { startEpisode } from "../../core/episode.ts";
import { CachedStore } from "../../store/cached.ts";
import { EpisodeStates } from "../../store/episodes.ts";
import { type ArtifactStore, putJson } from "../../store/mod.ts";
import { sampleRecords } from "./training.ts";

const judge = { model: "judge", hash: (s: string) => s.length.toString(16) };

/** A policy step's result as the episode workflow's history holds it: `{stateRef, pending}`, the state a delta. */
export async function storedPolicyStep(store: ArtifactStore) {
  // A record whose first assistant step calls a tool: the policy double makes that call.
  const record = (await sampleRecords()).find((r) =>
    r.messages.find((m) => m.role === "assistant")?.tool_calls.length
  )!;
  const call = record.messages.find((m) => m.role === "assistant")!.tool_calls[0]!;
  const states = new EpisodeStates(new CachedStore(store));
  const owner = { group: "runs/t/it-0/task-0", episode: "ep-0" };
  const recordRef = await putJson(store, record);
  let state = advance(startEpisode(record, {}), NO_CACHES, judge).state;
  const first = await states.save(state, { owner, recordRef, base: null });
  state = completePolicy(state, {
    content: "Let me look that up.",
    toolCalls: [{
      id: "c0",
      type: "function",
      function: call.function,
    }],
    finishReason: "tool_calls",
    usage: { promptTokens: 1, completionTokens: 1, latencyMs: 1 },
    model: "policy",
  });
  state = advance(state, NO_CACHES, judge).state;
  const saved = await states.save(state, { owner, recordRef, base: first });
  const recorded = record.messages.find((m) => m.role === "tool")!.content;
  return { result: { stateRef: saved.ref, pending: { kind: state.phase } }, call: call.function, recorded };
}
