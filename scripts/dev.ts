/**
 * `deno task dev`: runs the embedded Temporal dev server in the foreground (SQLite under
 * `.cm2/`, Web UI on :8233, cm2's search attributes) until Ctrl-C; reuses one already up.
 * Runtime: Deno.
 *
 * @module
 */
import { setup } from "./setup.ts";
import { startDevServer, TEMPORAL_UI_PORT } from "./temporal_server.ts";
import { startUiServer, UI_PORT } from "../ui/server.ts";
import { storeFrom } from "../cli/common.ts";

await setup();
// The Web UI shows payloads through cm2's codec endpoint (the content behind a store ref), served from here;
// the store is the CLI's (`CM2_STORE_URL`, default `.cm2/store`).
const store = storeFrom({});
const ui = startUiServer({ store, port: UI_PORT, anyPortIfTaken: true, temporalUiPort: TEMPORAL_UI_PORT });
const server = await startDevServer({ log: (l) => console.error(l), codecEndpoint: ui.codecEndpoint });
if (!server.owned) {
  console.log(`Temporal is already running at ${server.address} (Web UI ${server.uiUrl}); reusing it.`);
  Deno.exit(0);
}
console.log(
  `Temporal dev server at ${server.address}, Web UI ${server.uiUrl}, payloads shown through ${ui.codecEndpoint} (Ctrl-C stops it)`,
);
const stop = async () => {
  console.log("stopping Temporal…");
  await server.stop();
  await ui.stop();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
await server.child?.status;
