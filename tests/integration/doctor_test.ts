/**
 * `cm2 doctor`, the pre-flight checks that `task start` runs when it fails, against real services: the
 * suite's Temporal dev server, HTTP servers on 127.0.0.1, the project venv and the checked llama-server.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { loadRunConfig } from "../../config.ts";
import { checkLlama, checkRoles, checkTemporal, checkVenv } from "../../scripts/doctor.ts";
import { ROOT } from "../../scripts/paths.ts";
import { freePort } from "../../scripts/temporal_server.ts";
import { useTemporal } from "../harness/temporal.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "doctor: Temporal answers; a port held by something else is named, with the fix",
  ...opts,
  fn: async () => {
    const temporal = await useTemporal();
    try {
      const ok = await checkTemporal(temporal.address);
      assert.equal(ok.status, "ok", ok.detail);
      // a TCP server that is not Temporal: accepts, says nothing useful, closes
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (listener.addr as Deno.NetAddr).port;
      (async () => {
        for await (const conn of listener) {
          await conn.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\n\r\nnot temporal")).catch(() => {});
          conn.close();
        }
      })().catch(() => {});
      const wrong = await checkTemporal(`127.0.0.1:${port}`, 3_000);
      listener.close();
      assert.equal(wrong.status, "fail");
      assert.match(wrong.detail, /not a Temporal frontend/);
      assert.match(wrong.fix!, new RegExp(`sport = :${port}`));
      const none = await checkTemporal(`127.0.0.1:${await freePort()}`);
      assert.equal(none.status, "warn");
      assert.match(none.detail, /nothing listens/);
    } finally {
      await temporal.release();
    }
  },
});

Deno.test({
  name: "doctor: each model role's endpoint is checked; a missing key or a dead endpoint fails with its fix",
  ...opts,
  fn: async () => {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) =>
        new URL(req.url).pathname === "/v1/models"
          ? Response.json({ data: [] })
          : new Response("", { status: 404 }),
    );
    const up = `http://127.0.0.1:${server.addr.port}/v1`;
    const dead = `http://127.0.0.1:${await freePort()}/v1`;
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-doctor-"));
    const file = path.join(dir, "c.json");
    await fs.writeFile(
      file,
      JSON.stringify({
        models: {
          judge: { baseURL: up, model: "j" },
          simulator: { baseURL: dead, model: "s" },
          labeler: { baseURL: up, model: "l", apiKeyEnv: "CM2_DOCTOR_TEST_UNSET_KEY" },
        },
      }),
    );
    try {
      const findings = await checkRoles(await loadRunConfig(file));
      const by = Object.fromEntries(findings.map((f) => [f.check, f]));
      assert.equal(by["model judge"]!.status, "ok");
      assert.equal(by["model simulator"]!.status, "fail");
      assert.match(by["model simulator"]!.fix!, /models\.simulator\.baseURL/);
      assert.equal(by["model labeler"]!.status, "fail");
      assert.match(by["model labeler"]!.detail, /CM2_DOCTOR_TEST_UNSET_KEY is not set/);
      assert.equal(by["model policy"]!.status, "ok", "the embedded policy may be down: task start starts it");
    } finally {
      await server.shutdown();
      await fs.rm(dir, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name:
    "doctor: the venv imports the trainer; the llama-server passed here; `cm2 doctor` exits by its findings",
  ...opts,
  fn: async () => {
    const venv = await checkVenv();
    assert.equal(venv.status, "ok", venv.detail);
    assert.match(venv.detail, /torch .*transformers .*peft/);
    const broken = await checkVenv("/nonexistent/python");
    assert.equal(broken.status, "warn");
    assert.ok(broken.fix);
    const llama = await checkLlama();
    assert.equal(llama.status, "ok", `${llama.detail} (${llama.fix})`);

    const temporal = await useTemporal();
    try {
      const run = async (args: string[]) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", path.join(ROOT, "client.ts"), "doctor", ...args],
          env: { TEMPORAL_ADDRESS: temporal.address },
          stdout: "piped",
          stderr: "piped",
        }).output();
        return {
          code: out.code,
          text: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr),
        };
      };
      const good = await run([]);
      assert.match(good.text, /ok {3}temporal: .* answers/);
      assert.match(good.text, /ok {3}llama-server: passed its smoke test here/);
      assert.match(good.text, /\d+ ok, \d+ warning\(s\), 0 problem\(s\)/);
      assert.equal(good.code, 0, good.text);
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-doctor-"));
      const file = path.join(dir, "c.json");
      await fs.writeFile(
        file,
        JSON.stringify({
          models: { judge: { baseURL: `http://127.0.0.1:${await freePort()}/v1`, model: "j" } },
        }),
      );
      const bad = await run(["--config", file]);
      assert.equal(bad.code, 1, bad.text);
      assert.match(bad.text, /FAIL model judge: .* does not answer/);
      await fs.rm(dir, { recursive: true, force: true });
    } finally {
      await temporal.release();
    }
  },
});
