/**
 * `cm2 doctor [--config FILE]`: checks this machine and the services a run needs, and prints each finding
 * with its fix (`scripts/doctor.ts` has the checks). Exit code 1 when any check fails, else 0.
 *
 * @module
 */
import type { Command } from "commander";
import { ConfigError, loadRunConfig, temporalAddress } from "../config.ts";
import { formatFindings, runDoctor } from "../scripts/doctor.ts";

/** Registers `cm2 doctor`. */
export function registerDoctorCommand(program: Command): void {
  program.command("doctor")
    .description(
      "check the CPU, the llama-server build, memory, disk, ports, Temporal, model endpoints, the venv",
    )
    .option("--config <file>", "run config whose model endpoints to check (default: the embedded demo)")
    .action(async (opts: { config?: string }) => {
      let config;
      try {
        config = await loadRunConfig(opts.config);
      } catch (err) {
        if (err instanceof ConfigError) {
          console.error(`error: ${err.message}`);
          Deno.exit(1);
        }
        throw err;
      }
      const findings = await runDoctor({ config, temporalAddress: temporalAddress() });
      console.log(formatFindings(findings));
      const failed = findings.filter((f) => f.status === "fail").length;
      const warned = findings.filter((f) => f.status === "warn").length;
      console.log(`\n${findings.length - failed - warned} ok, ${warned} warning(s), ${failed} problem(s)`);
      Deno.exit(failed ? 1 : 0);
    });
}
