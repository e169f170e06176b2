/**
 * The viewer's pages, rendered on the server to plain HTML from what `ui/data.ts` read (the browser computes
 * nothing it shows). Charts are uPlot, drawn by a small script from JSON inlined in the page. The same functions
 * render `cm2 ui`'s pages and `cm2 report`'s single file (links and assets differ, see {@linkcode PageContext}).
 *
 * Plain and accessible: semantic tables with headers, a skip link, visible focus, text contrast above 7:1, no
 * layout narrower than a laptop needs; verdicts are letters as well as colours.
 *
 * @module
 */
import type { LabelReport } from "../activities/labeling.ts";
import type { EpisodeState } from "../core/episode.ts";
import type { JudgeNotes, VerdictNote } from "../core/judge.ts";
import { workflowIds } from "../core/names.ts";
import type {
  CheckpointScore,
  EpisodeView,
  IterationKind,
  IterationMetrics,
  IterationOutcomes,
  IterationRewards,
  RunRow,
  ScoredEpisode,
  ScoredGroup,
  StepTokens,
  TaskAcross,
} from "./data.ts";

/** How pages link and load assets: served (`cm2 ui`) or in one file (`cm2 report`). */
export interface PageContext {
  /** The Temporal Web UI's base URL (`http://127.0.0.1:8233`) and namespace, for links to workflows. */
  temporalUi: string | null;
  namespace: string;
  /** A link to a view (`{run}`, `{run, kind, n}`, `{run, kind, n, task, ep}`, or `{}` for the runs list). */
  href(view: ViewRef): string;
  /** A link to a labeling report (absent: none shown). */
  labelingHref?: (out: string) => string;
  /** A link to one task across the iterations of runs (null: not available, e.g. not in a report). */
  compareHref(uuid: string, runs: string[]): string | null;
  /** `<script>`/`<link>` tags that load uPlot (served paths, or the library inlined). */
  head: string;
  /** Poll for new data and reload (only while a run is going, only when served). */
  live: string | null;
}

/** Which view a link points at. */
export interface ViewRef {
  run?: string;
  kind?: IterationKind;
  n?: number;
  task?: number;
  ep?: number;
}

/** HTML-escapes text. */
export function esc(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const fmt = (x: number | null | undefined, digits = 3) =>
  x === null || x === undefined || Number.isNaN(x)
    ? "–"
    : Number.isInteger(x)
    ? String(x)
    : x.toFixed(digits);

const CSS = `
:root { color-scheme: light; --fg:#111; --muted:#444; --line:#bbb; --bg:#fff; --pass:#0a5c2a; --fail:#8a1111;
  --link:#0645ad; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0; }
a { color: var(--link); }
a:focus, button:focus, summary:focus { outline: 3px solid #e8a200; outline-offset: 2px; }
.skip { position: absolute; left: -999px; } .skip:focus { left: 8px; top: 8px; background: #fff; padding: 4px; }
header, main { max-width: 1280px; margin: 0 auto; padding: 8px 16px; }
header { border-bottom: 1px solid var(--line); }
nav.crumbs { font-size: 14px; color: var(--muted); }
h1 { font-size: 22px; margin: 8px 0; } h2 { font-size: 18px; margin: 20px 0 8px; } h3 { font-size: 16px; }
table.data { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
.data th, .data td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
.data th { background: #f0f0f0; } .data td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 12px; }
.chart { border: 1px solid var(--line); padding: 4px; min-height: 230px; margin: 0; }
.chart h3 { margin: 2px 4px; font-size: 14px; }
.zero { background: #fff4cc; } .muted { color: var(--muted); }
.pass { color: var(--pass); font-weight: 600; } .fail { color: var(--fail); font-weight: 600; }
.msg { border-left: 4px solid var(--line); margin: 6px 0; padding: 4px 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.msg.user { border-color: #1f5fbf; } .msg.assistant { border-color: #0a5c2a; } .msg.tool { border-color: #7a4f00; }
.msg .role { font-weight: 600; font-size: 13px; } .tag { font-size: 12px; border: 1px solid var(--line);
  border-radius: 3px; padding: 0 4px; margin-left: 6px; }
code, pre { font: 13px ui-monospace, monospace; } pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.matrix td.v { text-align: center; font-family: ui-monospace, monospace; }
.toks { font: 13px ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere; padding: 4px; }
.tok { border-right: 1px solid #ddd; } details.tokens, details.reasoning { margin: 4px 0 8px; }
`;

/** One view: its title, breadcrumbs (label, link or null for the current view) and body. */
export interface View {
  title: string;
  crumbs: [string, string | null][];
  body: string;
}

function heading(v: View): string {
  const nav = v.crumbs.map(([label, href]) => href ? `<a href="${esc(href)}">${esc(label)}</a>` : esc(label))
    .join(" / ");
  return `<header><nav class="crumbs" aria-label="Breadcrumbs">${nav}</nav><h1>${esc(v.title)}</h1></header>`;
}

function documentOf(ctx: PageContext, title: string, inner: string, extraCss = ""): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)} · cm2</title><style>${CSS}${extraCss}</style>${ctx.head}</head>
<body><a class="skip" href="#main">Skip to content</a>${inner}${
    ctx.live ? `<script>${ctx.live}</script>` : ""
  }</body></html>`;
}

/** A whole page of one view. */
export function layout(ctx: PageContext, v: View): string {
  return documentOf(ctx, v.title, `${heading(v)}<main id="main">${v.body}</main>`);
}

/**
 * Several views in one document (`cm2 report`): each a section with an id, shown when the URL's fragment names
 * it (the first one otherwise), so the file's links work from `file://` with no script of ours.
 */
export function bundle(ctx: PageContext, title: string, views: { id: string; view: View }[]): string {
  const sections = views.map(({ id, view }) =>
    `<section class="view" id="${esc(id)}">${heading(view)}<main>${view.body}</main></section>`
  ).join("");
  const css = `section.view { display: none; } section.view:target { display: block; }
section.view:first-of-type { display: block; }
body:has(section.view:target) section.view:first-of-type:not(:target) { display: none; }`;
  return documentOf(ctx, title, `<div id="main">${sections}</div>`, css);
}

function temporalLink(ctx: PageContext, workflowId: string, label = "Temporal history"): string {
  if (!ctx.temporalUi) return "";
  const url = `${ctx.temporalUi}/namespaces/${encodeURIComponent(ctx.namespace)}/workflows/${
    encodeURIComponent(workflowId)
  }`;
  return `<a class="temporal" data-workflow-id="${esc(workflowId)}" href="${esc(url)}">${esc(label)}</a>`;
}

/** The runs list, and the labeling reports when there are any. */
export function runsPage(ctx: PageContext, runs: RunRow[], labeling: string[] = []): View {
  const rows = runs.map((r) =>
    `<tr><td><a href="${esc(ctx.href({ run: r.name }))}">${esc(r.name)}</a></td><td>${
      esc(r.status ?? "–")
    }</td>` +
    `<td class="num">${r.iterations}</td><td class="num">${fmt(r.lastReward)}</td>` +
    `<td class="num">${fmt(r.lastValidation)}</td><td>${esc(r.started ?? "–")}</td>` +
    `<td>${temporalLink(ctx, workflowIds.run(r.name), "history")}</td></tr>`
  ).join("");
  const body = runs.length === 0
    ? `<p>No runs in this store yet. <code>deno task start</code> makes one.</p>`
    : `<table class="data"><caption class="muted">Runs in the store, by name</caption><thead><tr><th scope="col">Run</th>
<th scope="col">Status</th><th scope="col">Iterations</th><th scope="col">Last reward</th>
<th scope="col">Last validation</th><th scope="col">Started</th><th scope="col">Temporal</th></tr></thead>
<tbody>${rows}</tbody></table>`;
  const reports = labeling.length === 0 || !ctx.labelingHref
    ? ""
    : `<h2>Labeling reports</h2><ul>${
      labeling.map((o) => `<li><a href="${esc(ctx.labelingHref!(o))}">${esc(o)}</a></li>`).join("")
    }</ul>`;
  return { title: "Runs", crumbs: [["Runs", null]], body: body + reports };
}

/** A chart: a title and series over iterations (null: no value at that iteration). */
export interface ChartSpec {
  id: string;
  title: string;
  x: number[];
  series: { label: string; values: (number | null)[] }[];
}

const CHART_SCRIPT = `
(function () {
  var specs = JSON.parse(document.getElementById("cm2-charts").textContent);
  var colors = ["#1f5fbf", "#b3370b", "#0a5c2a", "#6b3fa0"];
  specs.forEach(function (s) {
    var el = document.getElementById("chart-" + s.id);
    if (!el || typeof uPlot === "undefined") return;
    var opts = { width: Math.max(320, el.clientWidth - 10), height: 190, scales: { x: { time: false } },
      axes: [{ label: "iteration", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
      series: [{ label: "iteration" }].concat(s.series.map(function (x, i) {
        return { label: x.label, stroke: colors[i % colors.length], width: 2, points: { show: true, size: 5 },
          spanGaps: true };
      })) };
    var chart = new uPlot(opts, [s.x].concat(s.series.map(function (x) { return x.values; })), el);
    el.setAttribute("data-points", String(s.x.length));
    el.cm2Chart = chart;
  });
})();`;

function charts(specs: ChartSpec[]): string {
  const boxes = specs.map((s) =>
    `<figure class="chart" aria-label="${esc(s.title)}"><h3>${esc(s.title)}</h3>` +
    `<div id="chart-${esc(s.id)}" data-series="${
      esc(s.series.map((x) => x.label).join(", "))
    }"></div></figure>`
  ).join("");
  // `<` cannot end the JSON's script element early: escaped.
  const json = JSON.stringify(specs).replace(/</g, "\\u003c");
  return `<div class="charts">${boxes}</div><script type="application/json" id="cm2-charts">${json}</script>` +
    `<script>${CHART_SCRIPT}</script>`;
}

/** The curves of a run: one point per stored iteration, validation at the iterations it ran before. */
export function runCharts(
  train: IterationMetrics[],
  val: IterationMetrics[],
  outcomes: IterationOutcomes[] = [],
): ChartSpec[] {
  const xs = [...new Set([...train, ...val].map((m) => m.iteration))].sort((a, b) => a - b);
  const at = (list: IterationMetrics[], f: (m: IterationMetrics) => number | null | undefined) =>
    xs.map((x) => {
      const m = list.find((y) => y.iteration === x);
      const v = m ? f(m) : null;
      return v === undefined || v === null || Number.isNaN(v) ? null : v;
    });
  const u = (k: string) => (m: IterationMetrics) => m.update?.[k] ?? null;
  const trainAndVal = (id: string, title: string, f: (m: IterationMetrics) => number): ChartSpec => ({
    id,
    title,
    x: xs,
    series: [{ label: "train", values: at(train, f) }, { label: "validation", values: at(val, f) }],
  });
  return [
    trainAndVal("reward", "Mean reward", (m) => m.meanReward),
    trainAndVal("pass", "Item pass rate", (m) => m.itemPassRate),
    {
      id: "failed",
      title: "Failed episodes",
      x: xs,
      series: [{ label: "failed", values: at(train, (m) => m.failed) }],
    },
    { id: "loss", title: "Update loss", x: xs, series: [{ label: "loss", values: at(train, u("loss")) }] },
    { id: "kl", title: "KL to the reference", x: xs, series: [{ label: "kl", values: at(train, u("kl")) }] },
    {
      id: "tokens",
      title: "Tokens trained per update",
      x: xs,
      series: [{ label: "tokens", values: at(train, u("tokens")) }],
    },
    {
      id: "grad",
      title: "Grad norm and clip fraction",
      x: xs,
      series: [{ label: "grad norm", values: at(train, u("gradNorm")) }, {
        label: "clip fraction",
        values: at(train, u("clipFrac")),
      }],
    },
    {
      id: "entropy",
      title: "Entropy",
      x: xs,
      series: [{ label: "entropy", values: at(train, u("entropy")) }],
    },
    {
      id: "judge",
      title: "Judge calls and program-checked verdicts",
      x: xs,
      series: [{ label: "judge calls", values: at(train, (m) => m.judgeCalls) }, {
        label: "checked",
        values: at(train, (m) => m.checkedVerdicts ?? null),
      }],
    },
    {
      id: "sim",
      title: "Tool calls simulated and replayed",
      x: xs,
      series: [{ label: "simulated", values: at(train, (m) => m.simulatorCalls) }, {
        label: "replayed",
        values: at(train, (m) => m.replayHits),
      }],
    },
    {
      id: "seconds",
      title: "Seconds per iteration and phase",
      x: xs,
      series: [
        { label: "iteration", values: at(train, (m) => m.seconds) },
        { label: "rollouts", values: at(train, (m) => m.phases?.rollouts) },
        { label: "update", values: at(train, (m) => m.phases?.update ?? m.update?.seconds) },
        {
          label: "rewards + publish",
          values: at(train, (m) => m.phases && m.phases.rewards + m.phases.publish),
        },
        ...(train.some((m) => m.phases?.eval !== undefined)
          ? [{ label: "evaluation", values: at(train, (m) => m.phases?.eval) }]
          : []),
      ],
    },
    ...outcomeCharts(xs, outcomes.filter((o) => !o.validation)),
  ];
}

/** Failed episodes by end reason, and each turn's mean score, per training iteration. */
function outcomeCharts(xs: number[], outcomes: IterationOutcomes[]): ChartSpec[] {
  if (outcomes.length === 0) return [];
  const byX = (f: (o: IterationOutcomes) => number | null) =>
    xs.map((x) => {
      const o = outcomes.find((y) => y.iteration === x);
      return o ? f(o) : null;
    });
  const reasons = [...new Set(outcomes.flatMap((o) => Object.keys(o.failedBy)))].sort();
  const turns = Math.min(6, Math.max(0, ...outcomes.map((o) => o.turnPass.length)));
  return [
    {
      id: "failed-by",
      title: "Failed episodes by end reason",
      x: xs,
      series: reasons.length
        ? reasons.map((r) => ({ label: r, values: byX((o) => o.failedBy[r] ?? 0) }))
        : [{ label: "none failed", values: byX(() => 0) }],
    },
    {
      id: "turns",
      title: "Turn score by turn (train)",
      x: xs,
      series: Array.from({ length: turns }, (_, t) => ({
        label: `turn ${t}`,
        values: byX((o) => o.turnPass[t] ?? null),
      })),
    },
  ];
}

function metricsTable(ctx: PageContext, run: string, kind: IterationKind, list: IterationMetrics[]): string {
  if (list.length === 0) return `<p class="muted">None yet.</p>`;
  const rows = list.map((m) =>
    `<tr><td><a href="${esc(ctx.href({ run, kind, n: m.iteration }))}">${kind}-${m.iteration}</a></td>` +
    `<td class="num">${fmt(m.meanReward)}</td><td class="num">${fmt(m.itemPassRate)}</td>` +
    `<td class="num">${m.episodes}</td><td class="num">${m.failed}</td>` +
    `<td class="num">${m.judgeCalls}${m.checkedVerdicts ? ` (+${m.checkedVerdicts} checked)` : ""}</td>` +
    `<td class="num">${fmt(m.update?.loss ?? m.updateLoss, 4)}</td><td class="num">${
      fmt(m.update?.kl, 5)
    }</td>` +
    `<td class="num">${fmt(m.seconds, 0)}</td></tr>`
  ).join("");
  return `<table class="data"><thead><tr><th scope="col">Iteration</th><th scope="col">Mean reward</th>
<th scope="col">Item pass rate</th><th scope="col">Episodes</th><th scope="col">Failed</th>
<th scope="col">Judge calls</th><th scope="col">Loss</th><th scope="col">KL</th><th scope="col">Seconds</th></tr>
</thead><tbody>${rows}</tbody></table>`;
}

/** A run's overview: curves, then the iterations. */
export function runPage(
  ctx: PageContext,
  run: string,
  status: string | null,
  train: IterationMetrics[],
  val: IterationMetrics[],
  outcomes: IterationOutcomes[] = [],
  config: unknown = null,
  evals: CheckpointScore[] = [],
): View {
  const cfg = config === null
    ? ""
    : `<h2>Config</h2><details><summary>the config of the last iteration (secrets redacted)</summary><pre>${
      esc(JSON.stringify(config, null, 2))
    }</pre></details>`;
  const body = `<p>Status: <strong id="run-status">${esc(status ?? "unknown")}</strong> · ${train.length} ` +
    `training iteration${train.length === 1 ? "" : "s"}, ${val.length} validation pass${
      val.length === 1 ? "" : "es"
    } · ${temporalLink(ctx, workflowIds.run(run))}</p>
<h2>Curves</h2>${charts([...runCharts(train, val, outcomes), ...evalChart(evals)])}
<h2>Training iterations</h2>${metricsTable(ctx, run, "it", train)}
<h2>Validation passes</h2>${metricsTable(ctx, run, "val", val)}${evalSection(ctx, evals)}${cfg}`;
  return { title: `Run ${run}`, crumbs: [["Runs", ctx.href({})], [run, null]], body };
}

/** The checkpoints' benchmark scores (the benchmarks' own graders): a curve per category. */
function evalChart(evals: CheckpointScore[]): ChartSpec[] {
  if (evals.length === 0) return [];
  const xs = [...new Set(evals.map((e) => e.iteration))].sort((a, b) => a - b);
  const keys = [...new Set(evals.map((e) => `${e.bench}/${e.category}`))];
  const spec: ChartSpec = {
    id: "evals",
    title: "Benchmark score by checkpoint (own graders)",
    x: xs,
    series: keys.map((k) => ({
      label: k,
      values: xs.map((x) =>
        evals.find((e) => e.iteration === x && `${e.bench}/${e.category}` === k)?.score ?? null
      ),
    })),
  };
  return [spec];
}

/** The checkpoints' benchmark scores as a table, with each evaluation's workflow. */
function evalSection(ctx: PageContext, evals: CheckpointScore[]): string {
  if (evals.length === 0) return "";
  const rows = evals.map((e) =>
    `<tr data-iteration="${e.iteration}" data-key="${
      esc(`${e.bench}/${e.category}`)
    }" data-score="${e.score}">` +
    `<td class="num">it-${e.iteration}</td><td>${esc(e.bench)}</td><td>${esc(e.category)}</td>` +
    `<td class="num">${e.tasks}×${e.trials}</td><td class="num">${fmt(e.score)}</td><td class="num">[${
      fmt(e.ci95[0])
    }, ${fmt(e.ci95[1])}]</td><td class="num">${e.failures}</td><td>${
      temporalLink(ctx, e.workflowId, "evaluation")
    }</td></tr>`
  ).join("");
  return `<h2>Benchmark scores of checkpoints</h2>
<table class="data" id="eval-table"><thead><tr><th scope="col">Checkpoint</th><th scope="col">Benchmark</th><th scope="col">Category</th>
<th scope="col">Tasks</th><th scope="col">Score</th><th scope="col">95% CI</th><th scope="col">Failures</th>
<th scope="col">Workflow</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function compareLink(ctx: PageContext, uuid: string, run: string): string {
  const href = ctx.compareHref(uuid, [run]);
  return href ? `<a class="compare" href="${esc(href)}">across iterations</a>` : "";
}

/** An iteration: its groups, each episode's reward, end reason and steps; zero-variance groups marked. */
export function iterationPage(
  ctx: PageContext,
  run: string,
  kind: IterationKind,
  metrics: IterationMetrics,
  rewards: IterationRewards,
): View {
  const n = metrics.iteration;
  const wf = kind === "val" ? workflowIds.validation(run, n) : workflowIds.iteration(run, n);
  const zero = (g: ScoredGroup) => g.stats.trajectory.support > 1 && g.stats.trajectory.std === 0;
  const zeroCount = rewards.groups.filter(zero).length;
  const groups = rewards.groups.map((g) => {
    const eps = g.episodes.map((e: ScoredEpisode, i) =>
      `<td class="num"><a href="${esc(ctx.href({ run, kind, n, task: g.taskIndex, ep: i }))}" ` +
      `title="${esc(`${e.endReason}, ${e.steps} steps${e.excluded ? ", excluded" : ""}`)}">${
        fmt(e.reward)
      }</a>` +
      `<div class="muted">${esc(e.endReason)}${e.excluded ? " · excluded" : ""}</div></td>`
    ).join("");
    return `<tr class="${zero(g) ? "zero" : ""}"><th scope="row">task ${g.taskIndex}<div class="muted">${
      esc(g.uuid)
    }</div>${compareLink(ctx, g.uuid, run)}</th><td class="num">${
      fmt(g.stats.trajectory.mean)
    }</td><td class="num">${fmt(g.stats.trajectory.std)}${
      zero(g) ? ' <span class="tag">zero variance: teaches nothing</span>' : ""
    }</td>${eps}</tr>`;
  }).join("");
  const width = Math.max(0, ...rewards.groups.map((g) => g.episodes.length));
  const epHeads = Array.from({ length: width }, (_, i) => `<th scope="col">ep ${i}</th>`).join("");
  const u = metrics.update;
  const body = `<p>Mean reward <strong>${fmt(metrics.meanReward)}</strong> · item pass rate ${
    fmt(metrics.itemPassRate)
  } · ${metrics.episodes} episodes, ${metrics.failed} failed · judge calls ${metrics.judgeCalls}${
    metrics.checkedVerdicts ? ` (+${metrics.checkedVerdicts} checked)` : ""
  } · simulated ${metrics.simulatorCalls}, replayed ${metrics.replayHits} · ${fmt(metrics.seconds, 0)} s${
    u ? ` · update loss ${fmt(u.loss, 4)}, KL ${fmt(u.kl, 5)}, grad norm ${fmt(u.gradNorm, 4)}` : ""
  } · ${temporalLink(ctx, wf)}</p>
<p>${zeroCount} of ${rewards.groups.length} groups have zero reward variance.</p>
<table class="data"><thead><tr><th scope="col">Group</th><th scope="col">Mean</th><th scope="col">Std</th>${epHeads}</tr></thead>
<tbody>${groups}</tbody></table>`;
  return {
    title: `${run} · ${kind}-${n}`,
    crumbs: [["Runs", ctx.href({})], [run, ctx.href({ run })], [`${kind}-${n}`, null]],
    body,
  };
}

function messageHtml(state: EpisodeState, i: number, advantage?: number): string {
  const m = state.messages[i]!;
  const meta = state.meta[i];
  const tags = [
    advantage === undefined ? "" : `advantage ${advantage.toFixed(3)}`,
    meta?.result ? meta.result : "",
    meta?.source === "engine" ? "engine" : "",
    meta?.policyVersion ? `policy ${meta.policyVersion}` : "",
    meta?.finishReason && meta.finishReason !== "stop" ? meta.finishReason : "",
  ].filter(Boolean).map((t) => `<span class="tag">${esc(t)}</span>`).join("");
  const calls = (m.tool_calls ?? []).map((c) =>
    `<div><code>${esc(c.function.name)}(${esc(c.function.arguments)})</code></div>`
  ).join("");
  return `<div class="msg ${esc(m.role)}" data-index="${i}"><div class="role">${esc(m.role)}${tags}</div>` +
    `${m.content ? `<pre>${esc(m.content)}</pre>` : ""}${calls}</div>`;
}

/** Background of a token by its importance weight: white at 1, red below, blue above (text stays dark). */
function weightColour(w: number | null | undefined): string {
  if (w === null || w === undefined || !Number.isFinite(w)) return "transparent";
  const d = Math.min(1, Math.abs(Math.log(Math.max(w, 1e-6))) / Math.log(2));
  const a = (0.08 + 0.5 * d).toFixed(2);
  return w < 1 ? `rgba(200,40,40,${a})` : `rgba(40,90,220,${a})`;
}

const stat = (xs: readonly number[]) =>
  xs.length
    ? { mean: xs.reduce((a, b) => a + b, 0) / xs.length, min: Math.min(...xs), max: Math.max(...xs) }
    : null;

/**
 * One trained step's tokens as the update saw them: each token's text, advantage, the serving stack's and the
 * trainer's log-probs and, with rollout correction, the importance weight (as colour and as a table).
 */
function tokenView(st: StepTokens | undefined): string {
  if (!st) return "";
  const w = st.isWeight;
  const ws = w ? stat(w) : null;
  const spans = st.tokens.map((tok, k) =>
    `<span class="tok" style="background:${weightColour(w?.[k])}" title="${
      esc(
        `id ${st.tokenIds[k]} · advantage ${fmt(st.advantage[k])} · rollout lp ${
          fmt(st.rolloutLogprob[k])
        } · ` +
          `trainer lp ${fmt(st.oldLogprob[k])}${w ? ` · weight ${fmt(w[k])}` : ""}`,
      )
    }">${esc(tok)}</span>`
  ).join("");
  const rows = st.tokens.map((tok, k) =>
    `<tr><td class="num">${k}</td><td><code>${esc(JSON.stringify(tok))}</code></td><td class="num">${
      st.tokenIds[k]
    }</td><td class="num">${fmt(st.advantage[k])}</td><td class="num">${
      fmt(st.rolloutLogprob[k])
    }</td><td class="num">${fmt(st.oldLogprob[k])}</td><td class="num">${w ? fmt(w[k]) : "–"}</td></tr>`
  ).join("");
  const summary = `Tokens: ${st.tokens.length}, advantage ${fmt(st.advantage[0])}${
    ws
      ? `, importance weight mean ${fmt(ws.mean)} (min ${fmt(ws.min)}, max ${fmt(ws.max)})`
      : ", rollout correction off"
  }${st.vetoed ? ", vetoed" : ""}`;
  return `<details class="tokens" data-index="${st.messageIndex}"><summary>${esc(summary)}</summary>
<div class="toks" aria-label="tokens coloured by importance weight (blue above 1, red below)">${spans}</div>
<details><summary>as a table</summary><table class="data"><thead><tr><th scope="col">#</th><th scope="col">Token</th>
<th scope="col">Id</th><th scope="col">Advantage</th><th scope="col">Rollout log-prob</th><th scope="col">Trainer log-prob</th>
<th scope="col">Weight</th></tr></thead><tbody>${rows}</tbody></table></details></details>`;
}

const VERDICT = (x: boolean | null | undefined) =>
  x === true ? `<span class="pass">✓ yes</span>` : x === false ? `<span class="fail">✗ no</span>` : "·";
const SOURCE: Record<string, string> = { p: "program", m: "model", s: "skipped", "-": "not answered" };

/** The judge's notes of one turn and variant, by `step/item index`: each vote's answer and reasoning. */
function notesByCell(notes: readonly JudgeNotes[], state: EpisodeState, t: number, v: number) {
  const ids = (state.record.checklists[v]?.[t] ?? []).map((i) => i.id);
  const out = new Map<string, { vote: number; note: VerdictNote }[]>();
  for (const call of notes) {
    if (call.turn !== t || call.variant !== v) continue;
    call.itemIds.forEach((id, k) => {
      const key = `${call.step}/${ids.indexOf(id)}`;
      out.set(key, [...(out.get(key) ?? []), { vote: call.vote, note: call.notes[k]! }]);
    });
  }
  return out;
}

const NOTE_LABELS: Record<string, string> = {
  high_level_understanding_of_the_question: "Question",
  analysis_of_if_focus_on: "Focus",
  analysis_of_pass_condition: "Pass condition",
  analysis_of_failure_examples: "Failure examples",
};

function noteHtml(note: VerdictNote): string {
  return Object.entries(NOTE_LABELS).flatMap(([f, label]) => {
    const text = note[f as keyof VerdictNote];
    return typeof text === "string" && text ? [`<p><strong>${label}:</strong> ${esc(text)}</p>`] : [];
  }).join("");
}

/**
 * The checklist of one turn and variant: items × steps, each cell the verdict and its source; what each item
 * paid (variant 0, from the stored rewards), and the judge's reasoning behind each model verdict.
 */
function checklistMatrix(
  state: EpisodeState,
  t: number,
  v: number,
  scored: ScoredEpisode,
  notes: readonly JudgeNotes[],
): string {
  const items = state.record.checklists[v]?.[t] ?? [];
  const turn = state.turns[t];
  if (items.length === 0 || !turn) return "";
  const sat = turn.sat[v] ?? [];
  const by = turn.by?.[v] ?? [];
  const heads = turn.steps.map((_, s) => `<th scope="col">step ${s}</th>`).join("");
  const cellNotes = notesByCell(notes, state, t, v);
  const paidRow = v === 0 ? scored.items?.[t] : undefined;
  const reasons: string[] = [];
  const rows = items.map((item, k) => {
    const cells = turn.steps.map((_, s) => {
      const src = by[s]?.[k];
      const said = cellNotes.get(`${s}/${k}`) ?? [];
      for (const { vote, note } of said) {
        reasons.push(
          `<li data-item="${esc(item.id)}" data-step="${s}"><code>${esc(item.id)}</code> at step ${s}${
            said.length > 1 ? `, vote ${vote}` : ""
          }: ${VERDICT(note.answer)}${noteHtml(note)}</li>`,
        );
      }
      const why = said[0]?.note.analysis_of_pass_condition;
      const title = [src ? SOURCE[src] ?? src : "", why ? `judge: ${why.slice(0, 300)}` : ""].filter(Boolean);
      return `<td class="v" data-item="${esc(item.id)}" data-step="${s}" data-verdict="${
        sat[s]?.[k] === true ? "1" : sat[s]?.[k] === false ? "0" : ""
      }" title="${esc(title.join(" · "))}">${VERDICT(sat[s]?.[k])}${
        src && src !== "-" ? ` <span class="muted">${esc(src)}</span>` : ""
      }</td>`;
    }).join("");
    const deps = item.dependence.length ? item.dependence.join(", ") : "–";
    const paid = paidRow?.[k];
    const paidCell = paidRow === undefined
      ? `<td class="num muted">–</td>`
      : `<td class="num" data-paid="${paid?.reward ?? 0}">${fmt(paid?.reward ?? 0)}${
        paid && paid.step >= 0 ? `<div class="muted">at step ${paid.step}</div>` : ""
      }</td>`;
    return `<tr><th scope="row"><code>${esc(item.id)}</code>${
      item.check ? ' <span class="tag">checked</span>' : ""
    }</th><td>${esc(item.question)}<details><summary>pass condition, evidence</summary><p>${
      esc(item.pass_condition)
    }</p>${
      item.evidence.map((e) => `<p class="muted">${esc(e.from)}: ${esc(e.snippet)}</p>`).join("")
    }</details></td><td class="num">${fmt(item.weight)}</td><td>${esc(deps)}</td><td>${
      item.required_for_next_turn ? "yes" : "no"
    }</td>${paidCell}${cells}</tr>`;
  }).join("");
  const reasoning = reasons.length
    ? `<details class="reasoning" data-turn="${t}" data-variant="${v}"><summary>The judge's reasoning (${reasons.length} ${
      reasons.length === 1 ? "verdict" : "verdicts"
    })</summary><ul>${reasons.join("")}</ul></details>`
    : "";
  return `<table class="data matrix" data-turn="${t}" data-variant="${v}"><caption class="muted">Checklist, turn ${t}${
    state.record.checklists.length > 1 ? `, variant ${v}` : ""
  } (sources: p program, m model, s skipped; paid: the item's share of the episode reward)</caption><thead><tr><th scope="col">Item</th>
<th scope="col">Question</th><th scope="col">Weight</th><th scope="col">Depends on</th><th scope="col">Required</th><th scope="col">Paid</th>${heads}</tr>
</thead><tbody>${rows}</tbody></table>${reasoning}`;
}

/** An episode: transcript by turn and step, each turn's checklist matrix and score, and why it ended. */
export function episodePage(
  ctx: PageContext,
  run: string,
  kind: IterationKind,
  n: number,
  task: number,
  ep: number,
  data: EpisodeView,
): View {
  const { scored, state } = data;
  const turns = state.turns.map((turn, t) => {
    const idx = [turn.userIndex];
    for (let i = turn.userIndex + 1; i < state.messages.length && (state.meta[i]?.turn ?? -1) === t; i++) {
      idx.push(i);
    }
    const matrices = state.record.checklists.map((_, v) => checklistMatrix(state, t, v, scored, data.notes))
      .join("");
    const score = scored.turnScores[t];
    return `<section aria-labelledby="turn-${t}"><h2 id="turn-${t}">Turn ${t}${
      score === undefined ? "" : ` · score ${fmt(score)}`
    }${turn.passed ? ` · gate ${turn.passed.map((p) => (p ? "passed" : "failed")).join("/")}` : ""}</h2>${
      idx.map((i) => messageHtml(state, i, data.advantages.get(i)) + tokenView(data.tokens.get(i))).join("")
    }${matrices}</section>`;
  }).join("");
  const end = state.end;
  const body = `<p>Reward <strong id="episode-reward">${fmt(scored.reward)}</strong> · ended: <strong>${
    esc(end?.reason ?? scored.endReason)
  }</strong>${
    end?.detail ? ` <span class="muted">(${esc(end.detail.slice(0, 300))})</span>` : ""
  } · ${scored.steps} steps${scored.excluded ? " · excluded from the update" : ""} · group mean ${
    fmt(data.group.stats.trajectory.mean)
  } · record <code>${esc(data.group.uuid)}</code> · ${temporalLink(ctx, data.workflowId)}</p>${turns}`;
  return {
    title: `${run} · ${kind}-${n} · task ${task} · episode ${ep}`,
    crumbs: [
      ["Runs", ctx.href({})],
      [run, ctx.href({ run })],
      [`${kind}-${n}`, ctx.href({ run, kind, n })],
      [`task ${task} ep ${ep}`, null],
    ],
    body,
  };
}

/** The page for a missing view. */
export function errorPage(ctx: PageContext, status: number, message: string): View {
  return {
    title: status === 404 ? "Not found" : "Error",
    crumbs: [["Runs", ctx.href({})]],
    body: `<p>${esc(message)}</p>`,
  };
}

/**
 * One task across iterations and runs, side by side: the group's rewards, each checklist item's verdict share
 * (episodes whose last judged step answered it yes, of those that reached its turn), and the first episode's
 * assistant steps.
 */
export function comparePage(ctx: PageContext, uuid: string, runs: string[], cols: TaskAcross[]): View {
  const crumbs: [string, string | null][] = [
    ["Runs", ctx.href({})],
    ...runs.map((r): [string, string] => [
      r,
      ctx.href({ run: r }),
    ]),
    [`task ${uuid}`, null],
  ];
  if (cols.length === 0) {
    return {
      title: `Task ${uuid}`,
      crumbs,
      body: `<p>No iteration of ${esc(runs.join(", "))} sampled ${esc(uuid)}.</p>`,
    };
  }
  const head = cols.map((c) =>
    `<th scope="col"><a href="${esc(ctx.href({ run: c.run, kind: c.kind, n: c.n }))}">${
      esc(c.run)
    } ${c.kind}-${c.n}</a>` +
    `<div class="muted">policy v${c.policyVersion}</div></th>`
  ).join("");
  const rewardRow = cols.map((c) =>
    `<td class="num">${fmt(c.group.stats.trajectory.mean)}<div class="muted">${
      c.group.episodes.map((e, i) =>
        `<a href="${esc(ctx.href({ run: c.run, kind: c.kind, n: c.n, task: c.group.taskIndex, ep: i }))}">${
          fmt(e.reward, 2)
        }</a>`
      ).join(" ")
    }</div></td>`
  ).join("");
  const record = cols[0]!.states[0]?.record;
  const items = (record?.checklists[0] ?? []).flatMap((turn, t) => turn.map((item, k) => ({ t, k, item })));
  const itemRows = items.map(({ t, k, item }) => {
    const cells = cols.map((c) => {
      let yes = 0;
      let reached = 0;
      for (const st of c.states) {
        const turn = st.turns[t];
        const last = turn?.sat[0]?.at(-1);
        if (!turn || !last) continue;
        reached++;
        if (last[k] === true) yes++;
      }
      return `<td class="num" data-item="${esc(item.id)}">${reached ? `${yes}/${reached}` : "–"}</td>`;
    }).join("");
    return `<tr><th scope="row">turn ${t} <code>${esc(item.id)}</code></th><td>${
      esc(item.question)
    }</td>${cells}</tr>`;
  }).join("");
  const transcripts = cols.map((c) => {
    const st = c.states[0];
    const said = st
      ? st.messages.map((m, i) => (m.role === "assistant" || m.role === "tool" ? messageHtml(st, i) : ""))
        .join("")
      : "";
    return `<td>${said}</td>`;
  }).join("");
  const body = `<table class="data"><thead><tr><th scope="col">Task ${
    esc(uuid)
  }</th><th scope="col"></th>${head}</tr>
</thead><tbody><tr><th scope="row">Mean reward</th><td class="muted">episodes' rewards below</td>${rewardRow}</tr>
${itemRows}<tr><th scope="row">Episode 0</th><td class="muted">assistant steps and tool results</td>${transcripts}</tr>
</tbody></table><p class="muted">Item cells: episodes whose last judged step answered the item yes, of those that
reached its turn (variant 0).</p>`;
  return { title: `Task ${uuid} across ${runs.join(", ")}`, crumbs, body };
}

/** A labeling report: counts, repairs by kind, every rejection with its reasons, every failure. */
export function labelingPage(ctx: PageContext, out: string, r: LabelReport): View {
  const row = (k: string, v: unknown) =>
    `<tr><th scope="row">${esc(k)}</th><td class="num">${esc(v)}</td></tr>`;
  const repairs = Object.entries(r.repairs ?? {}).map(([k, v]) => row(`repaired: ${k}`, v)).join("");
  const rejections = r.rejections.map((x) =>
    `<tr><td><code>${
      esc(x.uuid)
    }</code></td><td class="num">${x.variant}</td><td class="num">${x.attempts}</td><td>${
      x.reasons.map((why) => `<div>${esc(why)}</div>`).join("")
    }</td></tr>`
  ).join("");
  const failures = r.failures.map((x) =>
    `<tr><td><code>${esc(x.uuid)}</code></td><td class="num">${x.variant}</td><td>${esc(x.reason)}</td></tr>`
  ).join("");
  const body = `<table class="data"><tbody>${row("dataset labeled", r.dataset)}${
    row("prompt version", r.promptVersion)
  }${row("records", r.records)}${row("variants per record", r.variants)}${row("labeled", r.labeled)}${
    row("of which repaired", r.repaired)
  }${repairs}${row("rejected", r.rejected)}${row("failed", r.failed)}${row("skipped", r.skipped)}${
    row("records in the output", r.labeledRecords)
  }${row("labeler calls", r.attempts)}${
    row("tokens (prompt / completion)", `${r.tokens.promptTokens} / ${r.tokens.completionTokens}`)
  }${row("estimated cost (USD)", r.costUsd === null ? "–" : r.costUsd.toFixed(4))}${
    row("written", r.createdAt)
  }</tbody></table>
<h2>Rejected (${r.rejections.length})</h2>${
    rejections
      ? `<table class="data"><thead><tr><th scope="col">Record</th><th scope="col">Variant</th><th scope="col">Attempts</th>
<th scope="col">Reasons</th></tr></thead><tbody>${rejections}</tbody></table>`
      : "<p>None.</p>"
  }
<h2>Failed (${r.failures.length})</h2>${
    failures
      ? `<table class="data"><thead><tr><th scope="col">Record</th><th scope="col">Variant</th><th scope="col">Reason</th></tr>
</thead><tbody>${failures}</tbody></table>`
      : "<p>None.</p>"
  }`;
  return { title: `Labeling of ${out}`, crumbs: [["Runs", ctx.href({})], [`labeling ${out}`, null]], body };
}
