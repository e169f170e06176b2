/**
 * `cm2 ui` (the run viewer and the Web UI's codec endpoint, `ui/server.ts`) and `cm2 report RUN --out FILE` (one
 * run's views in a single offline HTML file, `ui/report.ts`).
 *
 * @module
 */
import cliProgress from "cli-progress";
import type { Command } from "commander";
import * as fs from "node:fs/promises";
import { connectClient, temporalAddress, webUiUrl } from "../config.ts";
import { checkRunName, RunData, ViewerError } from "../ui/data.ts";
import { buildReport } from "../ui/report.ts";
import { startUiServer, UI_PORT } from "../ui/server.ts";
import { fail, storeFrom } from "./common.ts";

const STORE_HELP = "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)";

/** A Temporal client for run statuses, or null (the viewer then shows what the store holds, statuses unknown). */
async function optionalClient() {
  try {
    return await connectClient();
  } catch (err) {
    console.error(
      `note: Temporal at ${temporalAddress()} is not reachable (${(err as Error).message.split("\n")[0]}); ` +
        "showing the store without run statuses",
    );
    return null;
  }
}

/** Registers `cm2 ui` and `cm2 report`. */
export function registerUiCommands(program: Command): void {
  program.command("ui")
    .description(
      "serve the run viewer (runs, curves, iterations, episodes with their checklists) on 127.0.0.1",
    )
    .option("--port <n>", `port (default ${UI_PORT}; 0: any free port)`, String(UI_PORT))
    .option("--store <url>", STORE_HELP)
    .action(async (opts: { port: string; store?: string }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        fail(`--port must be a port number, got ${opts.port}`);
      }
      const conn = await optionalClient();
      const uiUrl = webUiUrl();
      let server;
      try {
        server = startUiServer({
          store: storeFrom(opts),
          port,
          temporalUiPort: Number(new URL(uiUrl).port || 80),
          temporal: {
            client: conn?.client ?? null,
            uiUrl,
            namespace: conn?.client.options.namespace ?? "default",
          },
        });
      } catch (err) {
        fail((err as Error).message);
      }
      console.log(`cm2 ui: ${server.url}/ (Ctrl-C stops it)`);
      await new Promise<void>((resolve) => {
        for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => resolve());
      });
      await server.stop();
      await conn?.connection.close();
    });

  program.command("report")
    .argument("<run>", "run name")
    .description("write one run's views (curves, iterations, episodes) as a single offline HTML file")
    .requiredOption("--out <file>", "the HTML file to write")
    .option("--max-episodes <n>", "most episodes included (the rest are counted, not shown)", "2000")
    .option("--store <url>", STORE_HELP)
    .action(async (run: string, opts: { out: string; maxEpisodes: string; store?: string }) => {
      const maxEpisodes = Number(opts.maxEpisodes);
      if (!Number.isInteger(maxEpisodes) || maxEpisodes < 0) {
        fail(`--max-episodes must be a whole number ≥ 0, got ${opts.maxEpisodes}`);
      }
      try {
        checkRunName(run);
      } catch (err) {
        fail((err as Error).message);
      }
      const conn = await optionalClient();
      const data = new RunData(storeFrom(opts), conn?.client ?? null);
      const bar = new cliProgress.SingleBar({
        format: "report [{bar}] {value}/{total} views",
        hideCursor: true,
      });
      try {
        const { train, val } = await data.metrics(run);
        if (train.length === 0 && val.length === 0) {
          fail(`run ${run} has no stored iterations in ${data.store.url}`);
        }
        bar.start(1, 0);
        const r = await buildReport(data, run, {
          maxEpisodes,
          temporalUi: webUiUrl(),
          namespace: conn?.client.options.namespace ?? "default",
        }, (done, total) => {
          bar.setTotal(total);
          bar.update(done);
        });
        bar.stop();
        // Written beside, then renamed: a failed report never replaces a good one.
        const tmp = `${opts.out}.tmp-${Deno.pid}`;
        await fs.writeFile(tmp, r.html);
        await fs.rename(tmp, opts.out);
        console.log(
          `wrote ${opts.out}: ${r.views} views, ${r.episodes} episodes` +
            (r.episodesLeftOut ? ` (${r.episodesLeftOut} left out: --max-episodes)` : "") +
            `, ${(r.html.length / 1024).toFixed(0)} KiB`,
        );
      } catch (err) {
        bar.stop();
        if (err instanceof ViewerError) fail(err.message);
        throw err;
      } finally {
        await conn?.connection.close();
      }
    });
}
