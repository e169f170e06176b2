/**
 * A trivial workflow that proves the stack end to end (client → server → worker → activity).
 *
 * @module
 */
import { proxyActivities } from "@temporalio/workflow";
import type { Activities } from "../activities/mod.ts";

const { smokeEcho } = proxyActivities<Activities>({
  startToCloseTimeout: "10 seconds",
  retry: { maximumAttempts: 3 },
});

/** Input of {@linkcode smokeWorkflow}. */
export interface SmokeInput {
  name: string;
}

/** Calls one activity and returns its greeting. */
export async function smokeWorkflow(input: SmokeInput): Promise<{ greeting: string }> {
  const { text } = await smokeEcho({ text: `hello, ${input.name}` });
  return { greeting: text };
}
