/**
 * `cm2 config check FILE`: validate a run config; print it resolved with secrets redacted, or every error.
 *
 * @module
 */
import type { Command } from "commander";
import { configSummary, redactedConfig } from "../core/config.ts";
import { ConfigError, loadRunConfig } from "../config.ts";
import { fail } from "./common.ts";

/** Registers `cm2 config`. */
export function registerConfigCommands(program: Command): void {
  const config = program.command("config").description("run configuration");
  config.command("check").argument("<file>", "run config (JSON)").description(
    "validate a config; print it resolved with secrets redacted, or every error with its path and value",
  ).action(async (file: string) => {
    try {
      const cfg = await loadRunConfig(file);
      console.log(JSON.stringify(redactedConfig(cfg, (n) => Deno.env.get(n)), null, 2));
      console.error(`ok: ${configSummary(cfg)}`);
    } catch (err) {
      if (err instanceof ConfigError) fail(err.message);
      throw err;
    }
  });
}
