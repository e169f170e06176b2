/**
 * cm2's local web server, on 127.0.0.1 only. Today it serves the codec endpoint of the Temporal Web UI under
 * `/codec` (`ui/codec.ts`): the dev server started by `task dev` / `task start` is given
 * `--ui-codec-endpoint <url>/codec`, so the UI shows what a step said instead of a store hash.
 *
 * @module
 */
import type { ArtifactStore } from "../store/mod.ts";
import { CODEC_LIMITS, codecHandler, uiOrigins } from "./codec.ts";

/** A running server. */
export interface UiServer {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** What `temporal server start-dev --ui-codec-endpoint` takes. */
  codecEndpoint: string;
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
}

/** cm2's web server's default port (beside the Temporal Web UI's 8233). */
export const UI_PORT = 8234;

/** Starts the server; a port in use is a clear error that names it (unless `anyPortIfTaken`). */
export function startUiServer(opts: UiServerOptions): UiServer {
  const codec = codecHandler(opts.store, uiOrigins(opts.temporalUiPort), CODEC_LIMITS);
  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (url.pathname.startsWith("/codec/")) {
      const res = await codec(req, url.pathname.slice("/codec".length));
      if (res) return res;
    }
    return new Response(`not found: ${url.pathname}`, { status: 404 });
  };
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname: "127.0.0.1", port: opts.port, onListen: () => {} }, handler);
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse && opts.anyPortIfTaken && opts.port !== 0) {
      return startUiServer({ ...opts, port: 0 });
    }
    if (err instanceof Deno.errors.AddrInUse) {
      throw new Error(`cm2's web server cannot listen on 127.0.0.1:${opts.port}: the port is in use`);
    }
    throw err;
  }
  const url = `http://127.0.0.1:${server.addr.port}`;
  return { url, codecEndpoint: `${url}/codec`, stop: () => server.shutdown() };
}
