/**
 * The Temporal Web UI shows content, not hashes: a dev server started with cm2's codec endpoint (as `task dev` and
 * `task start` start it), a workflow whose input is a policy step as its history holds it (`{stateRef, pending}`,
 * the state a real engine delta in the store), and the UI's workflow page in headless Chromium. The page must show
 * what the step said, fetched by the UI itself from `/codec/decode`; without the codec, the same page shows only
 * the ref.
 */
import { Client, Connection } from "@temporalio/client";
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { Page } from "puppeteer-core";
import { freePort, startDevServer } from "../../scripts/temporal_server.ts";
import { FsStore } from "../../store/fs_store.ts";
import { startUiServer } from "../../ui/server.ts";
import { browserTestsIgnored, pageText, screenshot, waitForText, withPage } from "../harness/browser.ts";
import { storedPolicyStep } from "../harness/stored_step.ts";

/** Opens a workflow's page and waits until `text` is on it (or 60 s pass); returns the page's text. */
async function workflowPageText(
  page: Page,
  uiUrl: string,
  workflowId: string,
  text: string,
): Promise<string> {
  await page.goto(`${uiUrl}/namespaces/default/workflows/${encodeURIComponent(workflowId)}`, {
    waitUntil: "domcontentloaded",
    timeout: 60_000,
  });
  await waitForText(page, text);
  return await pageText(page);
}

/**
 * A dev server with a Web UI (and cm2's codec endpoint when `codec`), and a workflow started with a stored
 * policy step as its input; no worker, so the workflow stays open and its input is what the UI shows.
 */
async function withStepInUi(
  codec: boolean,
  fn: (
    ui: { uiUrl: string; workflowId: string; step: Awaited<ReturnType<typeof storedPolicyStep>> },
  ) => Promise<void>,
): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-ui-codec-"));
  const store = new FsStore(dir);
  const uiPort = await freePort();
  const viewer = codec ? startUiServer({ store, port: 0, temporalUiPort: uiPort }) : null;
  const server = await startDevServer({
    port: await freePort(),
    uiPort,
    dbFile: null,
    reuse: false,
    ...(viewer ? { codecEndpoint: viewer.codecEndpoint } : {}),
  });
  const connection = await Connection.connect({ address: server.address });
  try {
    const step = await storedPolicyStep(store);
    const handle = await new Client({ connection }).workflow.start("cm2CodecDisplayTest", {
      taskQueue: "cm2-codec-display-test",
      workflowId: `codec-test-${codec}/it-0/task-0/ep-0`,
      args: [step.result],
    });
    await fn({ uiUrl: server.uiUrl!, workflowId: handle.workflowId, step });
  } finally {
    await connection.close();
    await server.stop();
    await viewer?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

Deno.test({
  name: "the Temporal Web UI shows a policy step's content through cm2's codec endpoint",
  ignore: browserTestsIgnored,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withStepInUi(true, async ({ uiUrl, workflowId, step: { result, call } }) => {
      const said = `assistant: Let me look that up. ${call.name}(`;
      await withPage(async (page, problems) => {
        const decodes: string[] = [];
        page.on("request", (r) => {
          if (r.method() === "POST" && new URL(r.url()).pathname === "/codec/decode") decodes.push(r.url());
        });
        const text = await workflowPageText(page, uiUrl, workflowId, said);
        const shot = await screenshot(page, "temporal-ui-codec");
        assert.ok(decodes.length > 0, "the UI called the codec endpoint");
        assert.ok(text.includes(result.stateRef.sha256), "the ref itself is still shown");
        assert.ok(text.includes('"kind": "episode step"'), text.slice(0, 2000));
        assert.deepEqual(problems.filter((p) => /codec/i.test(p)), [], `codec problems (screenshot ${shot})`);
      });
    }),
});

Deno.test({
  name: "without the codec endpoint, the Web UI shows only the ref (the test above can fail)",
  ignore: browserTestsIgnored,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withStepInUi(false, async ({ uiUrl, workflowId, step: { result } }) => {
      await withPage(async (page) => {
        const text = await workflowPageText(page, uiUrl, workflowId, result.stateRef.sha256);
        assert.ok(!text.includes("episode step"), "no content without the codec");
        assert.ok(!text.includes("Let me look that up."), "no content without the codec");
      });
    }),
});
