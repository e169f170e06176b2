/**
 * `cm2 report RUN --out run.html`: the viewer's pages of one run as a single self-contained HTML file (data and
 * uPlot inlined, no network), to attach to an issue or a paper. Views are sections shown by the URL fragment:
 * `#run`, `#it-3`, `#it-3-task-0-ep-2`. Episodes beyond `maxEpisodes` are left out, and the run page says so.
 *
 * @module
 */
import type { IterationKind, RunData } from "./data.ts";
import { uplotAssets } from "./assets.ts";
import {
  bundle,
  comparePage,
  episodePage,
  esc,
  iterationPage,
  type PageContext,
  runPage,
  type View,
  type ViewRef,
} from "./pages.ts";

/** The section id of a view in a report. */
export function reportId(v: ViewRef): string {
  if (v.run === undefined || v.kind === undefined || v.n === undefined) return "run";
  const it = `${v.kind}-${v.n}`;
  return v.task === undefined || v.ep === undefined ? it : `${it}-task-${v.task}-ep-${v.ep}`;
}

/** The section id of a task's comparison across iterations. */
export function compareId(uuid: string): string {
  return `task-${uuid.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

/** Options of {@linkcode buildReport}. */
export interface ReportOptions {
  /** Most episode views included (in iteration order, validation passes after training). */
  maxEpisodes: number;
  temporalUi: string | null;
  namespace: string;
}

/** The report of one run; `onProgress` is told each view as it is rendered. */
export async function buildReport(
  data: RunData,
  run: string,
  opts: ReportOptions,
  onProgress: (done: number, total: number) => void = () => {},
): Promise<{ html: string; views: number; episodes: number; episodesLeftOut: number }> {
  const { js, css } = await uplotAssets();
  // The held-out tasks (those of the validation passes) get a comparison across passes.
  const compared = new Set<string>();
  const ctx: PageContext = {
    temporalUi: opts.temporalUi,
    namespace: opts.namespace,
    href: (v) => `#${reportId(v)}`,
    compareHref: (uuid) => (compared.has(uuid) ? `#${compareId(uuid)}` : null),
    // `</script` cannot occur inside the inlined library's element.
    head: `<style>${css}</style><script>${js.replace(/<\/script/gi, "<\\/script")}</script>`,
    live: null,
  };
  const [{ train, val }, status] = await Promise.all([data.metrics(run), data.status(run)]);
  for (const m of val) {
    for (const g of (await data.iteration(run, "val", m.iteration)).rewards.groups) compared.add(g.uuid);
  }
  const iterations: { kind: IterationKind; n: number }[] = [
    ...train.map((m) => ({ kind: "it" as const, n: m.iteration })),
    ...val.map((m) => ({ kind: "val" as const, n: m.iteration })),
  ];
  const views: { id: string; view: View }[] = [];
  let episodes = 0;
  let leftOut = 0;
  const pending: { kind: IterationKind; n: number; task: number; ep: number }[] = [];
  for (const { kind, n } of iterations) {
    const { metrics, rewards } = await data.iteration(run, kind, n);
    views.push({ id: reportId({ run, kind, n }), view: iterationPage(ctx, run, kind, metrics, rewards) });
    for (const g of rewards.groups) {
      for (let ep = 0; ep < g.episodes.length; ep++) pending.push({ kind, n, task: g.taskIndex, ep });
    }
  }
  const total = views.length + Math.min(pending.length, opts.maxEpisodes) + 1;
  onProgress(views.length, total);
  for (const e of pending) {
    if (episodes >= opts.maxEpisodes) {
      leftOut++;
      continue;
    }
    const view = episodePage(
      ctx,
      run,
      e.kind,
      e.n,
      e.task,
      e.ep,
      await data.episode(run, e.kind, e.n, e.task, e.ep),
    );
    views.push({ id: reportId({ run, ...e }), view });
    episodes++;
    onProgress(views.length, total);
  }
  for (const uuid of compared) {
    views.push({
      id: compareId(uuid),
      view: comparePage(ctx, uuid, [run], await data.taskAcross([run], uuid)),
    });
  }
  // A report leaves out whether key variables are set on the machine that wrote it (their names stay).
  const config = await data.config([...train, ...val]);
  const overview = runPage(
    ctx,
    run,
    status?.status ?? null,
    train,
    val,
    await data.outcomes(train),
    config,
    await data.evals(run),
  );
  if (leftOut > 0) {
    overview.body = `<p><strong>${leftOut} of ${pending.length} episodes are not in this report</strong> ` +
      `(at most ${opts.maxEpisodes}; <code>cm2 report --max-episodes</code>, or <code>cm2 ui</code> for all).</p>` +
      overview.body;
  }
  overview.body += `<p class="muted">Report of run ${esc(run)}, written ${
    esc(new Date().toISOString())
  }.</p>`;
  views.unshift({ id: "run", view: overview });
  onProgress(total, total);
  return { html: bundle(ctx, `Run ${run}`, views), views: views.length, episodes, episodesLeftOut: leftOut };
}
