/**
 * The viewer's pages and server (`ui/pages.ts`, `ui/server.ts`) without a browser: model output is escaped (a
 * transcript is untrusted text), a chart's JSON cannot close its script element, the report's links are fragments,
 * and the server answers unknown runs, bad paths and other methods with clear errors over real HTTP.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { CachedStore } from "../../store/cached.ts";
import { EpisodeStates } from "../../store/episodes.ts";
import { FsStore } from "../../store/fs_store.ts";
import { putJson } from "../../store/mod.ts";
import type { IterationMetrics } from "../../ui/data.ts";
import { episodePage, layout, type PageContext, runCharts, runPage } from "../../ui/pages.ts";
import { reportId } from "../../ui/report.ts";
import { servedCompareHref, servedHref, startUiServer } from "../../ui/server.ts";
import { storedPolicyStep } from "../harness/stored_step.ts";

const ctx: PageContext = {
  temporalUi: null,
  namespace: "default",
  href: servedHref,
  compareHref: servedCompareHref,
  head: "",
  live: null,
};

Deno.test("viewer pages: model output is escaped, never markup; a step shows its advantage", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-pages-"));
  try {
    const store = new FsStore(dir);
    const { result } = await storedPolicyStep(store);
    const { state } = await new EpisodeStates(new CachedStore(store)).load(result.stateRef);
    const evil = `<script>alert(1)</script><img src=x onerror=alert(2)>`;
    const hostile = {
      ...state,
      messages: state.messages.map((m) => (m.role === "assistant" ? { ...m, content: evil } : m)),
    };
    const step = hostile.messages.findIndex((m) => m.role === "assistant");
    const item = state.record.checklists[0]![0]![0]!;
    const html = layout(
      ctx,
      episodePage(ctx, "r", "it", 0, 0, 0, {
        group: {
          taskIndex: 0,
          recordIndex: 0,
          uuid: "u",
          episodes: [],
          stats: { trajectory: { mean: 0, std: 0, support: 1 } },
        },
        scored: {
          state: result.stateRef,
          ok: true,
          endReason: "reply-complete",
          reward: 0.5,
          turnScores: [0.5],
          items: [
            state.record.checklists[0]![0]!.map((_, k) => ({ step: k === 0 ? 0 : -1, reward: k ? 0 : 0.5 })),
          ],
          excluded: false,
          steps: 1,
        },
        state: hostile,
        advantages: new Map([[step, -0.4375]]),
        notes: [{
          turn: 0,
          variant: 0,
          step: 0,
          vote: 0,
          itemIds: [item.id],
          notes: [{ answer: true, analysis_of_pass_condition: `judge says ${evil}` }],
        }],
        tokens: new Map([[step, {
          messageIndex: step,
          tokens: [evil, "ok"],
          tokenIds: [7, 8],
          advantage: [-0.4375, -0.4375],
          rolloutLogprob: [-0.5, null],
          oldLogprob: [-0.4, -0.1],
          isWeight: [0.5, 2],
          vetoed: false,
        }]]),
        workflowId: "run/r/it-0/task-0/ep-0",
      }),
    );
    assert.ok(!html.includes("<script>alert"), "no script from the transcript, the notes or the tokens");
    assert.ok(!html.includes("<img src=x"), "no element from the transcript, the notes or the tokens");
    assert.ok(html.includes("&#60;script&#62;alert(1)&#60;/script&#62;"), "shown as text");
    assert.ok(html.includes("advantage -0.438"), "the step's advantage from the batch");
    assert.match(html, /The judge&#39;s reasoning \(1 verdict\)|The judge's reasoning \(1 verdict\)/);
    assert.ok(html.includes("judge says &#60;script"), "the note, escaped");
    assert.ok(html.includes("importance weight mean 1.250 (min 0.500, max 2)"), "the step's weights");
    assert.ok(html.includes(`data-paid="0.5"`), "what the item paid");
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("viewer pages: chart data cannot end its script element; one point per iteration", () => {
  const m = (iteration: number, meanReward: number, validation = false) =>
    ({ iteration, validation, meanReward, update: { kl: iteration / 10 } }) as unknown as IterationMetrics;
  const specs = runCharts([m(0, 0.1), m(1, 0.2), m(2, 0.3)], [m(0, 0.05, true), m(2, 0.25, true)]);
  const reward = specs.find((s) => s.id === "reward")!;
  assert.deepEqual(reward.x, [0, 1, 2]);
  assert.deepEqual(reward.series[0]!.values, [0.1, 0.2, 0.3]);
  assert.deepEqual(reward.series[1]!.values, [0.05, null, 0.25], "validation only where it ran");
  const html = runPage(ctx, "r</script><b>x", null, [m(0, 0.1)], []).body;
  const json = html.slice(
    html.indexOf('id="cm2-charts">') + 16,
    html.indexOf("</script>", html.indexOf("cm2-charts")),
  );
  assert.doesNotThrow(() => JSON.parse(json.replace(/\\u003c/g, "<")));
});

Deno.test("viewer pages: a run's checkpoint evaluations, one chart point and one row each", () => {
  const m = (iteration: number) =>
    ({ iteration, validation: false, meanReward: 0.1 }) as unknown as IterationMetrics;
  const score = (iteration: number, category: string, value: number) => ({
    iteration,
    bench: "bfcl",
    category,
    tasks: 5,
    trials: 1,
    score: value,
    ci95: [0, value] as [number, number],
    failures: 0,
    workflowId: `eval/r-it-${iteration}-0123456789/bfcl/abcd`,
  });
  const evals = [
    score(1, "multi_turn_base", 0.2),
    score(3, "multi_turn_base", 0.4),
    score(3, "multi_turn_miss_func", 0),
  ];
  const html = runPage(ctx, "r", null, [m(0), m(1), m(2), m(3)], [], [], null, evals).body;
  const specs = JSON.parse(
    html.slice(html.indexOf('id="cm2-charts">') + 16, html.indexOf("</script>", html.indexOf("cm2-charts"))),
  ) as { id: string; x: number[]; series: { label: string; values: (number | null)[] }[] }[];
  const chart = specs.find((s) => s.id === "evals")!;
  assert.deepEqual(chart.x, [1, 3]);
  assert.deepEqual(chart.series.map((x) => [x.label, x.values]), [
    ["bfcl/multi_turn_base", [0.2, 0.4]],
    ["bfcl/multi_turn_miss_func", [null, 0]],
  ]);
  assert.equal(html.match(/<tr data-iteration=/g)?.length, 3);
  assert.ok(html.includes('data-score="0.4"'));
  assert.ok(
    !runPage(ctx, "r", null, [m(0)], []).body.includes("Benchmark scores"),
    "no section without evals",
  );
});

Deno.test("report ids and served links", () => {
  assert.equal(reportId({}), "run");
  assert.equal(reportId({ run: "a", kind: "val", n: 3 }), "val-3");
  assert.equal(reportId({ run: "a", kind: "it", n: 3, task: 1, ep: 2 }), "it-3-task-1-ep-2");
  assert.equal(servedHref({ run: "a b", kind: "it", n: 3, task: 1, ep: 2 }), "/runs/a%20b/it-3/task-1/ep-2");
});

Deno.test("viewer server: unknown runs, unsafe names and other methods get clear errors", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-viewer-"));
  const ui = startUiServer({ store: new FsStore(dir), port: 0, temporalUiPort: 8233 });
  try {
    const get = async (p: string, init?: RequestInit) => {
      const r = await fetch(ui.url + p, init);
      return { status: r.status, text: await r.text() };
    };
    const home = await get("/");
    assert.equal(home.status, 200);
    assert.match(home.text, /No runs in this store yet/);
    const none = await get("/runs/nope");
    assert.equal(none.status, 404);
    assert.match(none.text, /no run nope/);
    const it = await get("/runs/nope/it-3");
    assert.equal(it.status, 404);
    assert.match(it.text, /run nope has no iteration 3/);
    for (const bad of ["/runs/..%2F..%2Fetc", "/runs/a%2Fb", "/runs/a%00b", "/runs/..%2F..%2Fetc/it-0"]) {
      const r = await get(bad);
      assert.equal(r.status, 404, bad);
    }
    const malformed = await get("/runs/%E0%A4%A");
    assert.equal(malformed.status, 400);
    assert.match(malformed.text, /bad percent-encoding/);
    const post = await get("/runs/nope", { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    const js = await fetch(`${ui.url}/assets/uplot.js`);
    assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.match(await js.text(), /uPlot/);
  } finally {
    await ui.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("viewer server: a run's stamp changes when an iteration's metrics land (what live pages poll)", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-viewer-live-"));
  const store = new FsStore(dir);
  const ui = startUiServer({ store, port: 0, temporalUiPort: 8233 });
  try {
    const stamp = async () => await (await fetch(`${ui.url}/api/runs/live/stamp`)).text();
    const before = await stamp();
    assert.equal(await stamp(), before, "stable while nothing lands");
    await store.setName("runs/live/metrics/it-0", await putJson(store, { schema: "cm2.metrics/v1" }));
    assert.notEqual(await stamp(), before);
  } finally {
    await ui.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
