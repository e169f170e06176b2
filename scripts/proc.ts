/**
 * How a child process ended, in words a user can act on, and the last lines of its log. Used wherever cm2
 * starts a program and must say why it stopped (`task start`, the llama-server check, `cm2 doctor`).
 * Runtime: Deno.
 *
 * @module
 */
import * as fs from "node:fs/promises";

/** What a fatal signal usually means for the programs cm2 runs. */
const SIGNAL_MEANING: Record<string, string> = {
  SIGILL: "illegal instruction: the binary uses a CPU instruction this machine cannot run",
  SIGKILL: "killed: out of memory? (see `dmesg`), or stopped by another process",
  SIGSEGV: "segmentation fault: a crash in native code",
  SIGBUS: "bus error: a mapped file changed or the disk is full?",
  SIGABRT: "aborted: an assertion or uncaught exception (see the log)",
  SIGFPE: "arithmetic exception",
  SIGTERM: "terminated",
  SIGINT: "interrupted",
  SIGHUP: "hang-up: its terminal went away",
};

/** Signal numbers on Linux x86-64/arm64 (exit code 128 + n from a shell). */
const SIGNAL_NUMBERS: Record<number, string> = {
  1: "SIGHUP",
  2: "SIGINT",
  4: "SIGILL",
  6: "SIGABRT",
  7: "SIGBUS",
  8: "SIGFPE",
  9: "SIGKILL",
  11: "SIGSEGV",
  15: "SIGTERM",
};

/** The name of the signal that ended a process, if a signal did. */
export function exitSignal(status: { code: number; signal?: string | null }): string | undefined {
  if (status.signal) return status.signal;
  // A shell that ran the program without `exec` reports 128 + the signal's number.
  return status.code > 128 ? SIGNAL_NUMBERS[status.code - 128] : undefined;
}

/** "SIGILL: illegal instruction: …" or "exit code 1". */
export function describeExit(status: { code: number; signal?: string | null }): string {
  const sig = exitSignal(status);
  if (sig) return `${sig}: ${SIGNAL_MEANING[sig] ?? "killed by a signal"}`;
  return `exit code ${status.code}`;
}

/** The last `n` non-empty lines of a text, each prefixed for quoting in an error message. */
export function lastLines(text: string, n = 15, prefix = "  | "): string {
  return text.split("\n").map((l) => l.trimEnd()).filter((l) => l.length > 0).slice(-n)
    .map((l) => prefix + l).join("\n");
}

/** The last `n` lines of a log file (reads at most its last 64 KiB); "" when it cannot be read. */
export async function tailFile(file: string, n = 15, prefix = "  | "): Promise<string> {
  try {
    const fh = await fs.open(file, "r");
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, 65_536);
      const buf = new Uint8Array(len);
      await fh.read(buf, 0, len, size - len);
      return lastLines(new TextDecoder().decode(buf), n, prefix);
    } finally {
      await fh.close();
    }
  } catch {
    return "";
  }
}
