/**
 * A worker started while Temporal is down waits for it (a dev-server restart, or a machine booting both) and
 * gives up with the connection error after `CM2_TEMPORAL_WAIT_S`. Real processes on 127.0.0.1.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { workerArgs } from "../../scripts/worker_process.ts";

/** Spawns worker.ts against `address`, collecting its output. */
function spawn(address: string, store: string, waitS: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: workerArgs("wait-test", store, { logLevel: "ERROR" }),
    env: { TEMPORAL_ADDRESS: address, CM2_TEMPORAL_WAIT_S: String(waitS) },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const out: string[] = [];
  const dec = new TextDecoder();
  const read = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) out.push(dec.decode(chunk));
  };
  const done = Promise.all([read(child.stdout), read(child.stderr)]);
  let exited: Deno.CommandStatus | undefined;
  child.status.then((s) => (exited = s));
  return { child, text: () => out.join(""), exited: () => exited, done };
}

async function until(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

Deno.test("a worker started before Temporal waits for it, and gives up after CM2_TEMPORAL_WAIT_S", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-wait-"));
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const w = spawn(address, path.join(dir, "store"), 120);
  let server;
  try {
    await until("the waiting message", () => w.text().includes("is not reachable"), 60_000);
    assert.match(w.text(), new RegExp(`Temporal at ${address} is not reachable .*waiting up to 120 s`));
    assert.equal(w.exited(), undefined, "still waiting");
    server = await startDevServer({ port, headless: true, dbFile: null, reuse: false });
    await until("the worker to start", () => w.text().includes("cm2 worker on task queue wait-test"), 90_000);
    assert.equal(w.exited(), undefined);
  } finally {
    w.child.kill("SIGTERM");
    await w.child.status;
    await w.done;
    await server?.stop();
  }

  // with nothing to wait for, the worker exits non-zero with the connection error
  const gone = spawn(`127.0.0.1:${await freePort()}`, path.join(dir, "store"), 1);
  try {
    const status = await gone.child.status;
    await gone.done;
    assert.notEqual(status.code, 0);
    assert.match(gone.text(), /Connection refused|tcp connect error/i);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
