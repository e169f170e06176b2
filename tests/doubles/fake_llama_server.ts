/**
 * Test double: the HTTP side of a llama-server (`/health`, `/completion`) for the fake build in
 * `fake_llama_server.sh`. It fails like the real one when the model file is missing (exit 1). Runtime: Deno.
 *
 * @module
 */
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: { port: { type: "string" }, m: { type: "string", short: "m" }, host: { type: "string" } },
  strict: false,
});
try {
  await Deno.stat(String(values.m));
} catch {
  console.error(`failed to load model '${values.m}'`);
  Deno.exit(1);
}
Deno.serve({ hostname: "127.0.0.1", port: Number(values.port), onListen: () => {} }, async (req) => {
  const url = new URL(req.url);
  if (url.pathname === "/health") return Response.json({ status: "ok" });
  if (url.pathname === "/completion") {
    const body = await req.json();
    const n = Number(body.n_predict ?? 4);
    return Response.json({
      content: " fake".repeat(n),
      tokens_predicted: n,
      timings: { predicted_per_second: 42, prompt_per_second: 420 },
    });
  }
  return new Response("not found", { status: 404 });
});
