/**
 * A real S3-protocol server for tests: moto's server mode (PyPI `moto[server]`, pinned in the trainer's test
 * extra) as a child process on 127.0.0.1, with one fresh bucket per caller. Test credentials are set in this
 * process's environment (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` = `test`) and passed to children by
 * {@linkcode S3TestServer.env}. The server stops with {@linkcode S3TestServer.stop}.
 *
 * @module
 */
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { PYTHON } from "../../scripts/paths.ts";
import { freePort, isListening } from "../../scripts/temporal_server.ts";

/** A running moto server. */
export interface S3TestServer {
  endpoint: string;
  /** Environment for clients (this process has it set already). */
  env: Record<string, string>;
  /** Creates a fresh bucket and returns its store URL (`s3://<bucket>/<prefix>?endpoint=…`). */
  newStoreUrl(prefix?: string): Promise<string>;
  /** A raw client, for tests that tamper with objects. */
  client: S3Client;
  stop(): Promise<void>;
}

/** Starts moto on a free port (bounded wait: 30 s). */
export async function startS3Server(): Promise<S3TestServer> {
  const port = await freePort();
  const env = { AWS_ACCESS_KEY_ID: "test", AWS_SECRET_ACCESS_KEY: "test", AWS_REGION: "us-east-1" };
  for (const [k, v] of Object.entries(env)) Deno.env.set(k, v);
  const child = new Deno.Command(PYTHON, {
    args: ["-m", "moto.server", "-H", "127.0.0.1", "-p", String(port)],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const drain = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      log = (log + chunk).slice(-4000);
    }
  })();
  const deadline = Date.now() + 30_000;
  while (!(await isListening("127.0.0.1", port))) {
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await child.status;
      throw new Error(`moto server did not listen on 127.0.0.1:${port} within 30 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new S3Client({ region: "us-east-1", endpoint, forcePathStyle: true });
  let buckets = 0;
  return {
    endpoint,
    env,
    client,
    async newStoreUrl(prefix = "") {
      const bucket = `cm2-test-${++buckets}-${crypto.randomUUID().slice(0, 8)}`;
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
      return `s3://${bucket}${prefix ? `/${prefix}` : ""}?endpoint=${encodeURIComponent(endpoint)}`;
    },
    async stop() {
      client.destroy();
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await child.status;
      await drain.catch(() => {});
    },
  };
}
