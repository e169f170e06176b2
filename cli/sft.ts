/**
 * `cm2 sft <config.json>`: starts (or attaches to) the durable cold-start SFT run `sft/<name>` and shows its
 * progress (step, loss) from the trainer activity's heartbeats until it ends; `--detach` returns at once.
 * The final checkpoint is `sft/<name>/final` in the store, which `trainer.init` of an RL run names.
 *
 * @module
 */
import type { Client } from "@temporalio/client";
import cliProgress from "cli-progress";
import type { Command } from "commander";
import { storeNames, workflowIds } from "../core/names.ts";
import type { SftResult } from "../core/trainer_contract.ts";
import { sftRun } from "../workflows/sft.ts";
import { configOrFail, fail, startOrAttach, withClient } from "./common.ts";

/** The step, total and loss the trainer last heartbeated, if the SFT activity is running. */
async function heartbeatOf(
  client: Client,
  id: string,
): Promise<{ step?: number; of?: number; loss?: number }> {
  const d = await client.workflow.getHandle(id).describe().catch(() => undefined);
  const payload = d?.raw.pendingActivities?.[0]?.heartbeatDetails?.payloads?.[0];
  if (!payload?.data) return {};
  try {
    return JSON.parse(new TextDecoder().decode(payload.data));
  } catch {
    return {};
  }
}

/** One line per checkpoint of a finished SFT. */
export function formatSftResult(name: string, r: SftResult): string {
  const lines = [
    `sft ${name}: ${r.steps} steps${r.reused ? " (already finished)" : ""} → ${
      storeNames.sftFinal(name)
    } (${r.checkpoint.uri})`,
  ];
  for (const h of r.history) {
    const held = h.heldOutLoss === null ? "" : `, held-out loss ${h.heldOutLoss.toFixed(4)}`;
    lines.push(`  step ${h.step}: loss ${h.loss === null ? "-" : h.loss.toFixed(4)}${held}`);
  }
  if (r.skipped.tooLong + r.skipped.noLossToken > 0) {
    lines.push(
      `  skipped ${r.skipped.tooLong} too long, ${r.skipped.noLossToken} without an assistant token`,
    );
  }
  lines.push(`  start RL from it: "trainer": {"init": "${storeNames.sftFinal(name)}"}`);
  return lines.join("\n");
}

/** Registers `cm2 sft`. */
export function registerSftCommands(program: Command): void {
  program.command("sft")
    .argument("<config>", "run config (JSON) with an `sft` section")
    .option("--detach", "start it and return without watching")
    .option("--task-queue <queue>", "orchestrator task queue (default: the config's)")
    .description(
      "cold-start SFT on the assistant tokens of the reference trajectories, as a durable workflow sft/<name> " +
        "(checkpoints every sft.checkpointEvery steps; a killed trainer resumes from the last one)",
    )
    .action(async (file: string, opts: { detach?: boolean; taskQueue?: string }) => {
      const config = await configOrFail(file);
      const id = workflowIds.sft(config.name);
      await withClient(async ({ client }) => {
        const handle = await startOrAttach(client, id, () =>
          client.workflow.start(sftRun, {
            taskQueue: opts.taskQueue ?? config.temporal.taskQueue,
            workflowId: id,
            args: [{ config }],
          }));
        if (opts.detach) return;
        const bar = new cliProgress.SingleBar({
          format: "sft [{bar}] step {value}/{total} | loss {loss}",
          hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        let started = false;
        let result: { ok: SftResult } | { error: Error } | undefined;
        const finished = handle.result().then((ok) => ({ ok: ok as SftResult }), (error) => ({ error }));
        finished.then((r) => (result = r));
        while (!result) {
          const hb = await heartbeatOf(client, id);
          if (hb.step !== undefined && hb.of !== undefined) {
            const loss = hb.loss === undefined ? "-" : hb.loss.toFixed(4);
            if (!started) bar.start(hb.of, hb.step, { loss });
            started = true;
            bar.update(hb.step, { loss });
          }
          let tick: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([finished, new Promise((r) => (tick = setTimeout(r, 1000)))]);
          clearTimeout(tick);
        }
        if (started) bar.stop();
        if ("error" in result) {
          const cause = (result.error as { cause?: Error }).cause;
          fail(`SFT ${id} failed: ${cause?.message ?? result.error.message}`);
        }
        console.log(formatSftResult(config.name, result.ok));
      });
    });
}
