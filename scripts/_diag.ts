import { openStore } from "../store/open.ts";
import { getJson } from "../store/mod.ts";
const store = openStore("file:.cm2/store", Deno.cwd());
for (const n of await store.listNames(`runs/${Deno.args[0]}/metrics/`)) {
  const m = await getJson<any>(store, (await store.getName(n))!);
  const r = await getJson<any>(store, m.rewards);
  const rs = r.groups.map((g: any) => g.episodes.map((e: any) => Math.round(e.reward * 10)).join(""));
  const u = m.update;
  console.log(n.split("/").pop(), m.meanReward.toFixed(3), u ? `kl ${u.kl.toExponential(1)} ent ${u.entropy?.toFixed(2)} gn ${u.gradNorm.toFixed(3)} clip ${u.clipFrac.toFixed(3)} pg ${u.pgLoss.toFixed(3)} tok ${u.tokens}` : "", rs.slice(0, 8).join(" "));
}
