import { openStore } from "../store/open.ts";
import { CachedStore } from "../store/cached.ts";
import { EpisodeStates } from "../store/episodes.ts";
import { getJson } from "../store/mod.ts";
const run = Deno.args[0]!; const kind = Deno.args[1] ?? "val-0";
const store = openStore("file:.cm2/store", "/work/main");
const states = new EpisodeStates(new CachedStore(store));
const m = await getJson<any>(store, (await store.getName(`runs/${run}/metrics/${kind}`))!);
const r = await getJson<any>(store, m.rewards);
let n = 0;
for (const g of r.groups.slice(0, 3)) for (const e of g.episodes.slice(0, 2)) {
  const { state } = await states.load(e.state);
  console.log("---", g.uuid, e.reward, state.end?.reason, state.end?.detail, state.contextTokens, state.meta.at(-1)?.finishReason, JSON.stringify(state.turns[0]?.by));
  for (const msg of state.messages.slice(1)) console.log(msg.role, JSON.stringify(msg.content).slice(0, 200), JSON.stringify(msg.tool_calls ?? []).slice(0, 200));
  if (++n > 5) break;
}
