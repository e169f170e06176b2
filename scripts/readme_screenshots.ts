/**
 * The README's two screenshots of the run viewer, taken from a run in the store: the run overview and an episode's
 * checklist (the first episode of the last training iteration whose first turn has mixed verdicts).
 *
 *   deno run -A scripts/readme_screenshots.ts --run NAME [--store URL]
 *
 * Writes `docs/images/run-overview.png` and `docs/images/episode-checklist.png` (needs Debian's `chromium`).
 *
 * @module
 */
import * as path from "node:path";
import { parseArgs } from "node:util";
import { storeFrom } from "../cli/common.ts";
import { RunData } from "../ui/data.ts";
import { startUiServer } from "../ui/server.ts";
import { withPage } from "../tests/harness/browser.ts";
import { ROOT } from "./paths.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { run: { type: "string" }, store: { type: "string" } },
});
if (!values.run) throw new Error("--run NAME is required");
const run = values.run;
const store = storeFrom(values.store ? { store: values.store } : {});
const data = new RunData(store);
const { train } = await data.metrics(run);
const last = train.at(-1);
if (!last) throw new Error(`run ${run} has no training iterations in ${store.url}`);

// An episode whose first turn has both a passed and a failed item at its last step.
let target: { task: number; ep: number } | null = null;
for (const g of (await data.iteration(run, "it", last.iteration)).rewards.groups) {
  for (let ep = 0; ep < g.episodes.length && !target; ep++) {
    const { state } = await data.episode(run, "it", last.iteration, g.taskIndex, ep);
    const cells = state.turns[0]?.sat[0]?.at(-1) ?? [];
    if (cells.includes(true) && cells.includes(false)) target = { task: g.taskIndex, ep };
  }
  if (target) break;
}
target ??= { task: 0, ep: 0 };

const ui = startUiServer({
  store,
  port: 0,
  temporalUiPort: 8233,
  temporal: { client: null, uiUrl: "http://127.0.0.1:8233", namespace: "default" },
});
const out = path.join(ROOT, "docs", "images");
await Deno.mkdir(out, { recursive: true });
try {
  await withPage(async (page) => {
    await page.setViewport({ width: 1200, height: 820 });
    await page.goto(`${ui.url}/runs/${encodeURIComponent(run)}`, { waitUntil: "load" });
    await page.screenshot({ path: path.join(out, "run-overview.png") as `${string}.png` });
    await page.goto(
      `${ui.url}/runs/${encodeURIComponent(run)}/it-${last.iteration}/task-${target.task}/ep-${target.ep}`,
      {
        waitUntil: "load",
      },
    );
    await page.screenshot({ path: path.join(out, "episode-checklist.png") as `${string}.png` });
  });
  console.log(
    `wrote docs/images/run-overview.png and docs/images/episode-checklist.png (it-${last.iteration}, task ${target.task}, ep ${target.ep})`,
  );
} finally {
  await ui.stop();
}
