import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import { DeterminismViolationError } from "@temporalio/workflow";
import { Worker } from "@temporalio/worker";
import { workflowBundle } from "../harness/temporal.ts";

const HISTORIES = new URL("./histories/", import.meta.url);

async function loadHistory(name: string): Promise<{ events: Record<string, unknown>[] }> {
  return JSON.parse(await fs.readFile(new URL(name, HISTORIES), "utf8"));
}

async function committedHistories(): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(HISTORIES)) if (e.name.endsWith(".json")) names.push(e.name);
  return names.sort();
}

Deno.test({
  name: "every committed workflow history replays against the current workflow code",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const names = await committedHistories();
    assert.ok(names.length > 0, "no committed histories found");
    const bundle = await workflowBundle();
    for (const name of names) {
      await Worker.runReplayHistory({ workflowBundle: bundle }, await loadHistory(name), name);
    }
  },
});

Deno.test({
  name: "a history whose scheduled activity was changed raises DeterminismViolationError",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const history = await loadHistory("smoke.json");
    const scheduled = history.events.find((e) => e.eventType === "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED");
    assert.ok(scheduled, "smoke history has no scheduled activity");
    const attrs = scheduled.activityTaskScheduledEventAttributes as { activityType: { name: string } };
    attrs.activityType.name = "someOtherActivity";
    const bundle = await workflowBundle();
    await assert.rejects(
      () => Worker.runReplayHistory({ workflowBundle: bundle }, history, "broken"),
      (err: unknown) => err instanceof DeterminismViolationError,
    );
  },
});
