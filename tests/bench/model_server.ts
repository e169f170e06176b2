/**
 * The benchmark's model endpoint, in its own process: the scripted server (TEST DOUBLE) playing the
 * policy (`referencePolicy`), the judge (`hashJudge`) and the simulator (`echoSimulator`) at a fixed
 * latency. Running it in a child keeps its CPU work off the event loop of the side being measured,
 * so the Temporal side and the plain side meet the same endpoint.
 *
 * Protocol: prints one JSON line `{"url": …}` on stdout when listening; then for every line read on
 * stdin (`stats`) prints `{"calls": n, "byModel": {…}, "repeatedKeys": n}`; exits when stdin closes.
 *
 * Usage: `deno run -A tests/bench/model_server.ts --latency-ms 100 --deviate-every 3`
 *
 * @module
 */
import { parseArgs } from "node:util";
import { startScriptedServer } from "../scripted_server.ts";
import { echoSimulator, hashJudge, referencePolicy } from "../harness/scripted_models.ts";
import { sampleRecords } from "../harness/training.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "latency-ms": { type: "string", default: "100" },
    "deviate-every": { type: "string", default: "3" },
    "p-true": { type: "string", default: "0.7" },
  },
});
const deviateEvery = Number(values["deviate-every"]);
const records = await sampleRecords();
const server = startScriptedServer({
  roles: {
    "policy-model": referencePolicy(records, deviateEvery > 0 ? { deviateEvery } : {}),
    "judge-model": hashJudge(Number(values["p-true"])),
    "sim-model": echoSimulator(),
  },
  adapters: true,
  latencyMs: Number(values["latency-ms"]),
});

/** Counts, then forgets the recorded bodies so a long run does not hold every transcript in memory. */
let total = 0;
const byModel: Record<string, number> = {};
const keys = new Map<string, number>();
function drain(): void {
  let keep = 0;
  for (const c of server.calls) {
    if (c.endedAt === undefined) {
      server.calls[keep++] = c;
      continue;
    }
    total++;
    byModel[c.model] = (byModel[c.model] ?? 0) + 1;
    const key = c.headers["idempotency-key"];
    if (key) keys.set(key, (keys.get(key) ?? 0) + 1);
  }
  server.calls.length = keep;
}
const drainer = setInterval(drain, 1_000);

const encoder = new TextEncoder();
const write = (o: unknown) => Deno.stdout.writeSync(encoder.encode(JSON.stringify(o) + "\n"));
write({ url: server.url });

const decoder = new TextDecoder();
let buffered = "";
for await (const chunk of Deno.stdin.readable) {
  buffered += decoder.decode(chunk, { stream: true });
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    buffered = buffered.slice(nl + 1);
    drain();
    const repeatedKeys = [...keys.values()].reduce((n, v) => n + v - 1, 0);
    write({ calls: total, inFlight: server.calls.length, byModel, repeatedKeys });
  }
}
clearInterval(drainer);
await server.close();
