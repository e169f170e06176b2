/**
 * `deno task dev`: runs the embedded Temporal dev server in the foreground (SQLite under
 * `.cm2/`, Web UI on :8233, cm2's search attributes) until Ctrl-C; reuses one already up.
 * Runtime: Deno.
 *
 * @module
 */
import { setup } from "./setup.ts";
import { startDevServer } from "./temporal_server.ts";

await setup();
const server = await startDevServer({ log: (l) => console.error(l) });
if (!server.owned) {
  console.log(`Temporal is already running at ${server.address} (Web UI ${server.uiUrl}); reusing it.`);
  Deno.exit(0);
}
console.log(`Temporal dev server at ${server.address}, Web UI ${server.uiUrl} (Ctrl-C stops it)`);
const stop = async () => {
  console.log("stopping Temporal…");
  await server.stop();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
await server.child?.status;
