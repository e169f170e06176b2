/**
 * cm2's local web server (`cm2 ui`), on 127.0.0.1 only, `Deno.serve`:
 *
 * - the run viewer: `/` (runs), `/runs/<run>` (curves and iterations), `/runs/<run>/<it|val>-<n>` (groups),
 *   `/runs/<run>/<it|val>-<n>/task-<k>/ep-<g>` (an episode); pages of a running run reload when new metrics land;
 * - uPlot from the pinned npm package under `/assets/` (the pages work offline);
 * - the Temporal Web UI's codec endpoint under `/codec` (`ui/codec.ts`): the dev server started by `task dev` /
 *   `task start` is given `--ui-codec-endpoint <url>/codec`, so the UI shows what a step said, not a store hash.
 *
 * @module
 */
import type { Client } from "@temporalio/client";
import type { ArtifactStore } from "../store/mod.ts";
import { uplotAssets } from "./assets.ts";
import { CODEC_LIMITS, codecHandler, uiOrigins } from "./codec.ts";
import { checkRunName, type IterationKind, RunData, ViewerError } from "./data.ts";
import {
  comparePage,
  episodePage,
  errorPage,
  iterationPage,
  labelingPage,
  layout,
  type PageContext,
  runPage,
  runsPage,
  type View,
  type ViewRef,
} from "./pages.ts";

/** A running server. */
export interface UiServer {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** What `temporal server start-dev --ui-codec-endpoint` takes. */
  codecEndpoint: string;
  /** Gives the viewer a Temporal client (run statuses), e.g. once the dev server it started is up. */
  setTemporal(client: Client | null): void;
  stop(): Promise<void>;
}

/** Options of {@linkcode startUiServer}. */
export interface UiServerOptions {
  store: ArtifactStore;
  /** Port to listen on (0: any free port). */
  port: number;
  /** When `port` is in use, listen on any free port instead of failing. */
  anyPortIfTaken?: boolean;
  /** The Temporal Web UI's port, whose origin may call the codec. */
  temporalUiPort: number;
  /** Run status and links (none: statuses unknown, no links to histories). */
  temporal?: { client: Client | null; uiUrl: string | null; namespace: string };
}

/** cm2's web server's default port (beside the Temporal Web UI's 8233). */
export const UI_PORT = 8234;

/** The link of a view in the served viewer. */
export function servedHref(v: ViewRef): string {
  if (v.run === undefined) return "/";
  const run = `/runs/${encodeURIComponent(v.run)}`;
  if (v.kind === undefined || v.n === undefined) return run;
  const it = `${run}/${v.kind}-${v.n}`;
  return v.task === undefined || v.ep === undefined ? it : `${it}/task-${v.task}/ep-${v.ep}`;
}

/** The link of one task across the iterations of runs. */
export function servedCompareHref(uuid: string, runs: string[]): string {
  return `/compare/${encodeURIComponent(uuid)}?${runs.map((r) => `run=${encodeURIComponent(r)}`).join("&")}`;
}

const LIVE = (run: string, stamp: string) => `
(function () {
  var url = ${JSON.stringify(`/api/runs/${encodeURIComponent(run)}/stamp`)}, seen = ${JSON.stringify(stamp)};
  setInterval(function () {
    fetch(url).then(function (r) { return r.ok ? r.text() : seen; }).then(function (s) {
      if (s !== seen) location.reload();
    }).catch(function () {});
  }, 5000);
})();`;

const page = (ctx: PageContext, view: View, status = 200) =>
  new Response(layout(ctx, view), { status, headers: { "content-type": "text/html; charset=utf-8" } });

/** The viewer's request handler (the codec aside). */
export function viewerHandler(
  data: RunData,
  temporal: { uiUrl: string | null; namespace: string },
): (req: Request) => Promise<Response> {
  const base: PageContext = {
    temporalUi: temporal.uiUrl,
    namespace: temporal.namespace,
    href: servedHref,
    compareHref: servedCompareHref,
    labelingHref: (out) => `/labeling/${encodeURIComponent(out)}`,
    head: `<link rel="stylesheet" href="/assets/uplot.css"><script src="/assets/uplot.js"></script>`,
    live: null,
  };
  /** Changes when a run's stored metrics or status change. */
  const stamp = async (run: string) => {
    const names = await data.store.listNames(`runs/${checkRunName(run)}/metrics/`);
    return `${names.length}:${(await data.status(run))?.status ?? "?"}`;
  };
  return async (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") return new Response("GET only", { status: 405 });
    let path = new URL(req.url).pathname;
    try {
      try {
        path = decodeURIComponent(path);
      } catch {
        throw new ViewerError(400, `${path} is not a valid path (bad percent-encoding)`);
      }
      if (path === "/assets/uplot.js" || path === "/assets/uplot.css") {
        const a = await uplotAssets();
        const js = path.endsWith(".js");
        return new Response(js ? a.js : a.css, {
          headers: {
            "content-type": js ? "text/javascript; charset=utf-8" : "text/css; charset=utf-8",
            "cache-control": "max-age=3600",
          },
        });
      }
      if (path === "/favicon.ico") return new Response(null, { status: 204 });
      if (path === "/") return page(base, runsPage(base, await data.runs(), await data.labelingReports()));
      const l = /^\/labeling\/([^/]+)$/.exec(path);
      if (l) return page(base, labelingPage(base, l[1]!, await data.labelingReport(l[1]!)));
      let m = /^\/api\/runs\/([^/]+)\/stamp$/.exec(path);
      if (m) return new Response(await stamp(m[1]!), { headers: { "content-type": "text/plain" } });
      m = /^\/runs\/([^/]+)\/?$/.exec(path);
      if (m) {
        const run = checkRunName(m[1]!);
        const [{ train, val }, status] = await Promise.all([data.metrics(run), data.status(run)]);
        if (train.length === 0 && val.length === 0 && !status) throw new ViewerError(404, `no run ${run}`);
        const live = status?.status === "RUNNING" ? LIVE(run, await stamp(run)) : null;
        const outcomes = await data.outcomes(train);
        const config = await data.config([...train, ...val], (n) => Deno.env.get(n));
        return page(
          { ...base, live },
          runPage(base, run, status?.status ?? null, train, val, outcomes, config, await data.evals(run)),
        );
      }
      m = /^\/compare\/([^/]+)$/.exec(path);
      if (m) {
        const runs = new URL(req.url).searchParams.getAll("run").map(checkRunName);
        if (runs.length === 0) throw new ViewerError(400, "name the runs to compare: ?run=A&run=B");
        return page(base, comparePage(base, m[1]!, runs, await data.taskAcross(runs, m[1]!)));
      }
      m = /^\/runs\/([^/]+)\/(it|val)-(\d+)(?:\/task-(\d+)\/ep-(\d+))?\/?$/.exec(path);
      if (m) {
        const run = checkRunName(m[1]!);
        const kind = m[2] as IterationKind;
        const n = Number(m[3]);
        if (m[4] === undefined) {
          const { metrics, rewards } = await data.iteration(run, kind, n);
          return page(base, iterationPage(base, run, kind, metrics, rewards));
        }
        const task = Number(m[4]);
        const ep = Number(m[5]);
        return page(
          base,
          episodePage(base, run, kind, n, task, ep, await data.episode(run, kind, n, task, ep)),
        );
      }
      return page(base, errorPage(base, 404, `Nothing at ${path}.`), 404);
    } catch (err) {
      if (err instanceof ViewerError) return page(base, errorPage(base, err.status, err.message), err.status);
      console.error(`cm2 ui: ${path}: ${err instanceof Error ? err.stack : err}`);
      return page(
        base,
        errorPage(base, 500, `Could not show ${path}: ${err instanceof Error ? err.message : err}`),
        500,
      );
    }
  };
}

/** Starts the server; a port in use is a clear error that names it (unless `anyPortIfTaken`). */
export function startUiServer(opts: UiServerOptions): UiServer {
  const codec = codecHandler(opts.store, uiOrigins(opts.temporalUiPort), CODEC_LIMITS);
  const t = opts.temporal ?? { client: null, uiUrl: null, namespace: "default" };
  const data = new RunData(opts.store, t.client);
  const viewer = viewerHandler(data, t);
  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (url.pathname.startsWith("/codec/")) {
      const res = await codec(req, url.pathname.slice("/codec".length));
      if (res) return res;
    }
    return await viewer(req);
  };
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname: "127.0.0.1", port: opts.port, onListen: () => {} }, handler);
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse && opts.anyPortIfTaken && opts.port !== 0) {
      return startUiServer({ ...opts, port: 0 });
    }
    if (err instanceof Deno.errors.AddrInUse) {
      throw new Error(
        `cm2's web server cannot listen on 127.0.0.1:${opts.port}: the port is in use (a \`task start --keep\` ` +
          "or another `cm2 ui` serves it already?); `--port 0` picks a free port",
      );
    }
    throw err;
  }
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    url,
    codecEndpoint: `${url}/codec`,
    setTemporal: (client) => (data.temporal = client),
    stop: () => server.shutdown(),
  };
}
