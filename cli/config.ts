/**
 * `cm2 config check FILE`: validate a run config; print it resolved with secrets redacted, or every error; then
 * what would stop it from running here (missing files, unset keys, an unwritable store; `config_runnable.ts`).
 *
 * @module
 */
import type { Command } from "commander";
import { configSummary, redactedConfig } from "../core/config.ts";
import { ROOT } from "../config.ts";
import { runnableFindings } from "./config_runnable.ts";
import { configOrFail, fail } from "./common.ts";

/** Registers `cm2 config`. */
export function registerConfigCommands(program: Command): void {
  const config = program.command("config").description("run configuration");
  config.command("check").argument("<file>", "run config (JSON)").description(
    "validate a config; print it resolved with secrets redacted, or every error with its path and value",
  ).action(async (file: string) => {
    const cfg = await configOrFail(file);
    console.log(JSON.stringify(redactedConfig(cfg, (n) => Deno.env.get(n)), null, 2));
    const findings = await runnableFindings(cfg, ROOT, (n) => Deno.env.get(n));
    for (const f of findings) console.error(`${f.level}: ${f.path}: ${f.message}`);
    const errors = findings.filter((f) => f.level === "error").length;
    if (errors > 0) fail(`${file} validates but cannot run here: ${errors} error(s) above`);
    console.error(`ok: ${configSummary(cfg)}`);
  });
}
