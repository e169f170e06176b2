/**
 * The run viewer (`cm2 ui`) and the single-file report (`cm2 report`) in headless Chromium, on a run this test
 * trains (scripted models, test trainer, real Temporal). What the pages show is compared with what the store
 * holds: the curves have one point per iteration with the stored values, an episode's checklist matrix has the
 * stored verdicts, the Temporal link names the episode's workflow; the report opens from `file://` with the
 * network off and shows the same numbers. Screenshots go to `.cm2/test-artifacts/`.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { storeNames, workflowIds } from "../../core/names.ts";
import { CachedStore } from "../../store/cached.ts";
import { EpisodeStates } from "../../store/episodes.ts";
import { getJson } from "../../store/mod.ts";
import type { Batch } from "../../core/trainer_contract.ts";
import { RunData } from "../../ui/data.ts";
import type { IterationMetrics, IterationRewards } from "../../ui/data.ts";
import { buildReport } from "../../ui/report.ts";
import { startUiServer } from "../../ui/server.ts";
import { trainingRun } from "../../workflows/training.ts";
import { browserTestsIgnored, pageText, screenshot, waitForText, withPage } from "../harness/browser.ts";
import { sampleRecords, scriptedConfig, withTrainingStack } from "../harness/training.ts";
import { referencePolicy } from "../harness/scripted_models.ts";
import type { ParsedChatRequest } from "../scripted_server.ts";

const TEMPORAL_UI = "http://127.0.0.1:8233";
const ITERATIONS = 2;

Deno.test({
  name: "run viewer and report in Chromium show what the store holds, for a run trained here",
  ignore: browserTestsIgnored,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The scripted policy also returns token ids (as a policy server with tokens does), so the batch has
    // completions and the (test) trainer's per-token record has steps to show.
    const policy = referencePolicy(await sampleRecords(), { deviateEvery: 3 });
    const withTokens = async (req: ParsedChatRequest, call: number) => {
      const reply = await policy(req, call);
      const text = JSON.stringify(reply).length;
      return { ...reply, tokenIds: Array.from({ length: 3 + (text % 5) }, (_, k) => 100 + k) };
    };
    await withTrainingStack({ roles: { "policy-model": withTokens } }, async (stack) => {
      const name = `viewer-${crypto.randomUUID().slice(0, 6)}`;
      const config = scriptedConfig(stack.server.url, stack.storeRoot, stack.trainerQueue, {
        iterations: ITERATIONS,
        tasksPerIteration: 2,
        groupSize: 2,
        validationEvery: 1,
      }, name);
      await stack.client.workflow.execute(trainingRun, {
        taskQueue: stack.taskQueue,
        workflowId: workflowIds.run(name),
        args: [{ config }],
      });
      const stored = async (kind: "it" | "val", n: number) => {
        const ref = await stack.store.getName(storeNames.metrics(name, kind, n));
        assert.ok(ref, `${kind}-${n} stored`);
        const metrics = await getJson<IterationMetrics>(stack.store, ref);
        return { metrics, rewards: await getJson<IterationRewards>(stack.store, metrics.rewards) };
      };
      const it0 = await stored("it", 0);
      const it1 = await stored("it", 1);
      const val0 = await stored("val", 0);
      // The episode shown: the first one of it-1's first group whose turn 0 has verdicts.
      const group = it1.rewards.groups[0]!;
      const states = new EpisodeStates(new CachedStore(stack.store));
      const { state } = await states.load(group.episodes[0]!.state);

      const ui = startUiServer({
        store: stack.store,
        port: 0,
        temporalUiPort: 8233,
        temporal: { client: stack.client, uiUrl: TEMPORAL_UI, namespace: "default" },
      });
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), "cm2-report-"));
      try {
        await withPage(async (page, problems) => {
          // Runs list.
          await page.goto(`${ui.url}/`, { waitUntil: "load" });
          await waitForText(page, name);
          assert.match(await pageText(page), new RegExp(`${name}\\s+COMPLETED\\s+${ITERATIONS}`));

          // Run overview: one point per iteration, the stored values.
          await page.goto(`${ui.url}/runs/${name}`, { waitUntil: "load" });
          const reward = await page.evaluate(
            `(function () { var c = document.getElementById("chart-reward").cm2Chart; return c.data; })()`,
          ) as (number | null)[][];
          // x: one point per iteration, and the validation after the last update (policy of 2 updates) at 2.
          assert.deepEqual(reward[0], [0, 1, 2]);
          assert.deepEqual(reward[1], [it0.metrics.meanReward, it1.metrics.meanReward, null], "train series");
          const vals = await Promise.all(
            [0, 1, 2].map(async (n) => (await stored("val", n)).metrics.meanReward),
          );
          assert.deepEqual(reward[2], vals, "validation series");
          const kl = await page.evaluate(`document.getElementById("chart-kl").cm2Chart.data[1]`) as number[];
          assert.deepEqual(kl, [it0.metrics.update!.kl, it1.metrics.update!.kl, null]);
          // The run's config, as the iterations recorded it (secrets redacted).
          const cfg = await page.evaluate(`document.querySelector("details pre").textContent`) as string;
          assert.equal(JSON.parse(cfg).name, name);
          await screenshot(page, "viewer-run");

          // Iteration: groups with their stored rewards.
          await page.goto(`${ui.url}/runs/${name}/it-1`, { waitUntil: "load" });
          const text = await pageText(page);
          assert.ok(text.includes(group.uuid), "the group's record");

          // The same held-out task in every validation pass, side by side, with the stored group means.
          const heldOut = val0.rewards.groups[0]!;
          await page.goto(`${ui.url}/compare/${encodeURIComponent(heldOut.uuid)}?run=${name}`, {
            waitUntil: "load",
          });
          const heads = await page.evaluate(`Array.from(document.querySelectorAll("thead th a")).map(
            function (a) { return a.textContent; })`) as string[];
          const passes = (await stack.store.listNames(`runs/${name}/metrics/val-`)).length;
          assert.ok(passes >= ITERATIONS, `${passes} validation passes`);
          assert.deepEqual(
            heads.filter((h) => h.includes(" val-")),
            Array.from({ length: passes }, (_, i) => `${name} val-${i}`),
          );
          const firstMean = await page.evaluate(
            `document.querySelector("tbody tr td.num").firstChild.textContent`,
          ) as string;
          assert.equal(Number(firstMean), Number(heldOut.stats.trajectory.mean.toFixed(3)));

          // Episode: the checklist matrix holds the stored verdicts, cell by cell.
          await page.goto(`${ui.url}/runs/${name}/it-1/task-${group.taskIndex}/ep-0`, { waitUntil: "load" });
          const cells = await page.evaluate(`Array.from(document.querySelectorAll("table.matrix td.v")).map(
            function (td) { return [td.closest("table").dataset.turn, td.closest("table").dataset.variant,
              td.dataset.step, td.dataset.item, td.dataset.verdict]; })`) as string[][];
          const expected: string[][] = [];
          state.turns.forEach((turn, t) =>
            state.record.checklists.forEach((variant, v) =>
              (variant[t] ?? []).forEach((item, k) =>
                turn.steps.forEach((_, s) => {
                  const x = turn.sat[v]?.[s]?.[k];
                  expected.push([
                    String(t),
                    String(v),
                    String(s),
                    item.id,
                    x === true ? "1" : x === false ? "0" : "",
                  ]);
                })
              )
            )
          );
          const order = (a: string[], b: string[]) => a.join("|").localeCompare(b.join("|"));
          assert.ok(expected.length > 0, "the episode has checklist cells");
          assert.deepEqual(cells.sort(order), expected.sort(order));
          const link = await page.evaluate(`(function () { var a = document.querySelector("a.temporal");
            return [a.dataset.workflowId, a.href]; })()`) as string[];
          const wf = workflowIds.episode(name, 1, group.taskIndex, 0);
          assert.equal(link[0], wf);
          assert.equal(link[1], `${TEMPORAL_UI}/namespaces/default/workflows/${encodeURIComponent(wf)}`);
          // Each assistant step trained on shows its advantage from the iteration's stored batch.
          assert.ok(it1.metrics.batch, "the metrics name the batch");
          const batch = await getJson<Batch>(stack.store, it1.metrics.batch!);
          const sample = batch.samples.find((x) => group.episodes[0]!.state.sha256.startsWith(x.episodeId))!;
          const shown = await page.evaluate(`Array.from(document.querySelectorAll(".msg.assistant")).map(
            function (d) { return [Number(d.dataset.index), d.querySelector(".role").textContent]; })`) as [
            number,
            string,
          ][];
          for (const a of sample.advantages) {
            const row = shown.find(([i]) => i === a.messageIndex);
            assert.ok(row, `message ${a.messageIndex} shown`);
            assert.ok(row[1].includes(`advantage ${a.advantage.toFixed(3)}`), row[1]);
          }
          // What each item paid (variant 0), as the iteration's rewards stored it.
          const paid = await page.evaluate(`Array.from(document.querySelectorAll(
            'table.matrix[data-variant="0"] td[data-paid]')).map(function (td) {
              return [td.closest("table").dataset.turn, Number(td.dataset.paid)]; })`) as [string, number][];
          const storedPaid = group.episodes[0]!.items ?? [];
          assert.deepEqual(
            paid,
            storedPaid.flatMap((row, t) => row.map((x) => [String(t), x.reward])),
            "paid column = stored item rewards",
          );
          // The judge's reasoning behind each model verdict: one entry per stored note, with its text.
          const notes = await new RunData(stack.store).notes(
            storeNames.group(name, "it", 1, group.taskIndex),
            workflowIds.episode(name, 1, group.taskIndex, 0),
          );
          assert.ok(notes.length > 0, "the judge's notes were kept");
          const reasons = await page.evaluate(`Array.from(document.querySelectorAll("details.reasoning li"))
            .map(function (li) { return li.textContent; })`) as string[];
          const noteCount = notes.reduce((a, n) => a + n.notes.length, 0);
          assert.equal(reasons.length, noteCount);
          const said = notes[0]!.notes[0]!.analysis_of_pass_condition!;
          assert.ok(reasons.some((r) => r.includes(said)), `reasoning ${said} shown`);
          // The token view of each trained step: the record's tokens and weights.
          const tokens = await page.evaluate(`Array.from(document.querySelectorAll("details.tokens")).map(
            function (d) { return [Number(d.dataset.index), Array.from(d.querySelectorAll(".tok"))
              .map(function (t) { return t.textContent; })]; })`) as [number, string[]][];
          const byIndex = await new RunData(stack.store).tokens(name, 1, group.episodes[0]!.state);
          assert.ok(byIndex.size > 0, "the checkpoint's token record has this episode's steps");
          assert.deepEqual(
            tokens.sort((a, b) => a[0] - b[0]),
            [...byIndex.values()].map((st) => [st.messageIndex, st.tokens]).sort((a, b) =>
              (a[0] as number) - (b[0] as number)
            ),
          );
          await screenshot(page, "viewer-episode");
          assert.deepEqual(problems, [], "no console errors on the viewer's pages");
        });

        // The single-file report, offline from file://.
        const report = await buildReport(new RunData(stack.store, stack.client), name, {
          maxEpisodes: 1_000,
          temporalUi: TEMPORAL_UI,
          namespace: "default",
        });
        const file = path.join(dir, "run.html");
        await fs.writeFile(file, report.html);
        await withPage(async (page, problems) => {
          const requests: string[] = [];
          page.on("request", (r) => {
            if (!r.url().startsWith("file://")) requests.push(r.url());
          });
          await page.goto(`file://${file}`, { waitUntil: "load" });
          const reward = await page.evaluate(
            `document.getElementById("chart-reward").cm2Chart.data`,
          ) as number[][];
          assert.deepEqual(reward[1], [it0.metrics.meanReward, it1.metrics.meanReward, null]);
          await page.goto(`file://${file}#it-1-task-${group.taskIndex}-ep-0`, { waitUntil: "load" });
          const visible = await pageText(page);
          assert.ok(
            visible.includes(`task ${group.taskIndex} · episode 0`),
            "the episode's section is shown",
          );
          assert.ok(!visible.includes("Training iterations"), "only that section");
          assert.deepEqual(requests, [], "the report makes no network request");
          assert.deepEqual(problems, []);
          await screenshot(page, "report-episode");
        }, { offline: true });
      } finally {
        await ui.stop();
        await fs.rm(dir, { recursive: true, force: true });
      }
    });
  },
});
