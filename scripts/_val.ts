import { openStore } from "../store/open.ts";
import { getJson } from "../store/mod.ts";
const store = openStore("file:.cm2/store", Deno.cwd());
for (const n of await store.listNames(`runs/${Deno.args[0]}/metrics/`)) {
  const m = await getJson<any>(store, (await store.getName(n))!);
  const r = await getJson<any>(store, m.rewards);
  const rs = r.groups.flatMap((g: any) => g.episodes.map((e: any) => Math.round(e.reward * 100) / 100));
  const reasons: Record<string, number> = {};
  console.log(n, m.meanReward.toFixed(3), JSON.stringify(rs));
}
