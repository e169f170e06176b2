/**
 * `cm2 store …`: the artifact store. `cm2 store gc [--dry-run]` collects the intermediate episode states of
 * finished iterations (the retention rule is in `store/gc.ts`).
 *
 * @module
 */
import type { Command } from "commander";
import { collectGarbage } from "../store/gc.ts";
import { storeFrom } from "./common.ts";

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** Registers `cm2 store`. */
export function registerStoreCommands(program: Command): void {
  const store = program.command("store").description("the artifact store: garbage collection");
  store.command("gc")
    .option("--dry-run", "count what would be collected, delete nothing")
    .option("--store <url>", "store URL or path (default: $CM2_STORE_URL or file:.cm2/store)")
    .description(
      "delete the intermediate episode states of iterations whose metrics are stored; final states, rewards, " +
        "metrics, checkpoints, datasets and running iterations are kept",
    )
    .action(async (opts: { dryRun?: boolean; store?: string }) => {
      const s = storeFrom(opts);
      const dryRun = opts.dryRun ?? false;
      console.error(`${dryRun ? "dry run: " : ""}scanning ${s.url} …`);
      const r = await collectGarbage(s, {
        dryRun,
        progress: (n) => console.error(`  ${n} blobs scanned`),
      });
      for (const [it, e] of Object.entries(r.byIteration).sort()) {
        console.log(`${it}: ${e.states} intermediate states, ${mib(e.bytes)}`);
      }
      console.log(
        `${r.scannedBlobs} blobs (${
          mib(r.scannedBytes)
        }) scanned; ${r.states} episode states, ${r.finalStates} final; ` +
          `${r.collectable} collectable (${
            mib(r.collectableBytes)
          }), ${r.keptUnfinished} kept for unfinished ` +
          `iterations; ${dryRun ? "nothing deleted (dry run)" : `${r.deleted} deleted`}`,
      );
    });
}
