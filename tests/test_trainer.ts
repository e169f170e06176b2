/**
 * TEST DOUBLE — a test-only trainer worker activity. It implements the `updatePolicy` contract of
 * `core/trainer_contract.ts` without any model: it validates the request and the batch, records
 * every call, and returns a checkpoint ref, idempotently per (run, iteration) through the same
 * store pointer the Python trainer uses (`runs/<run>/checkpoints/it-<n>`). The real trainer is
 * `trainer/` (Python); the contract fixtures in `tests/contracts/` keep the two in step.
 *
 * @module
 */
import { Context } from "@temporalio/activity";
import { type ArtifactStore, getJson, putJson } from "../store/mod.ts";
import {
  BatchSchema,
  type CheckpointManifest,
  CheckpointManifestSchema,
  type SftRequest,
  SftRequestSchema,
  type SftResult,
  SftResultSchema,
  type UpdateRequest,
  UpdateRequestSchema,
  type UpdateResult,
  UpdateResultSchema,
} from "../core/trainer_contract.ts";

/** What the test trainer saw. */
export interface TestTrainerLog {
  /** Every call, including retries. */
  calls: { runId: string; iteration: number; reused: boolean; init?: string }[];
  /** Every `sftTrain` call: the run and the dataset manifests it got. */
  sftCalls?: { runId: string; dataset: string; heldOut: string | null; reused: boolean }[];
  /** Updates actually applied, per `run/iteration`. */
  applied: Map<string, number>;
}

/** Options of the test trainer: a pause inside each update (so a kill can land there), a hook on commit. */
export interface TestTrainerOptions {
  updateDelayMs?: number;
  /** Called when this process commits an update (writes the checkpoint pointer first). */
  onCommit?: (runId: string, iteration: number) => void | Promise<void>;
}

/** Creates the test trainer's activities over a store (the same store the orchestrator uses). */
export function createTestTrainer(
  store: ArtifactStore,
  log: TestTrainerLog = { calls: [], applied: new Map() },
  opts: TestTrainerOptions = {},
) {
  return {
    log,
    activities: {
      /** SFT without a model: one fake LoRA checkpoint named `sft/<run>/final`, first writer wins. */
      async sftTrain(raw: SftRequest): Promise<SftResult> {
        const req = SftRequestSchema.parse(raw);
        const final = `sft/${req.runId}/final`;
        const existing = await store.getName(final);
        (log.sftCalls ??= []).push({
          runId: req.runId,
          dataset: req.dataset.uri,
          heldOut: req.heldOut?.uri ?? null,
          reused: existing !== undefined,
        });
        const steps = Math.max(1, req.sft.maxSteps);
        const history = [{ step: steps, loss: 1, heldOutLoss: req.heldOut ? 1.5 : null }];
        if (!existing) {
          const manifest = await putJson(store, {
            schema: "cm2.sft-checkpoint/v1",
            runId: req.runId,
            step: steps,
            steps,
            base: req.base,
            dataset: req.dataset,
            heldOut: req.heldOut,
            finetune: req.sft.finetune,
            files: { "adapter.json": await putJson(store, { fake: "sft adapter", run: req.runId }) },
            metrics: { loss: 1, heldOutLoss: history[0]!.heldOutLoss },
            sft: req.sft,
            createdAt: new Date().toISOString(),
          });
          await store.setNameIfAbsent(final, manifest);
        }
        const checkpoint = (await store.getName(final))!;
        return SftResultSchema.parse({
          runId: req.runId,
          steps,
          checkpoint,
          reused: existing !== undefined,
          history,
          skipped: { tooLong: 0, noLossToken: 0 },
        });
      },
      async updatePolicy(raw: UpdateRequest): Promise<UpdateResult> {
        const req = UpdateRequestSchema.parse(raw);
        const name = `runs/${req.runId}/checkpoints/it-${req.iteration}`;
        const existing = await store.getName(name);
        if (existing) {
          log.calls.push({ runId: req.runId, iteration: req.iteration, reused: true });
          const m = await getJson(store, existing, CheckpointManifestSchema);
          return {
            runId: m.runId,
            iteration: m.iteration,
            version: m.version,
            checkpoint: existing,
            reused: true,
            metrics: m.metrics,
          };
        }
        const batch = BatchSchema.parse(await getJson(store, req.batch));
        const tokens = batch.samples.reduce((n, s) => n + s.messages.length, 0);
        const meanAdv = batch.samples.flatMap((s) => s.advantages.map((a) => a.advantage));
        const key = `${req.runId}/${req.iteration}`;
        log.applied.set(key, (log.applied.get(key) ?? 0) + 1);
        log.calls.push({
          runId: req.runId,
          iteration: req.iteration,
          reused: false,
          ...(req.init ? { init: req.init.uri } : {}),
        });
        const adapter = await putJson(store, {
          fake: "adapter",
          parent: req.parent,
          iteration: req.iteration,
        });
        // A per-token record in the real trainer's shape, made up: each token's text is its id, weight 1.
        const tokenRecord = await putJson(store, {
          version: 1,
          isCap: 2,
          isVeto: null,
          samples: batch.samples.map((s) => ({
            episodeId: s.episodeId,
            vetoed: false,
            steps: (s.completions ?? []).map((c) => {
              const adv = s.advantages.find((a) => a.messageIndex === c.messageIndex)?.advantage ?? 0;
              return {
                messageIndex: c.messageIndex,
                tokens: c.tokenIds.map((id) => `<${id}>`),
                tokenIds: c.tokenIds,
                advantage: c.tokenIds.map(() => adv),
                rolloutLogprob: c.tokenIds.map((_, k) => c.logprobs?.[k] ?? null),
                oldLogprob: c.tokenIds.map((_, k) => c.logprobs?.[k] ?? -1),
                isWeight: c.tokenIds.map((_, k) => 1 + ((k % 3) - 1) / 10),
              };
            }),
          })),
        });
        const manifest: CheckpointManifest = {
          schema: "cm2.checkpoint/v1",
          runId: req.runId,
          iteration: req.iteration,
          version: req.iteration + 1,
          base: req.base,
          batch: req.batch,
          parent: req.parent,
          files: { "adapter.json": adapter },
          tokens: tokenRecord,
          metrics: {
            loss: meanAdv.reduce((a, b) => a + Math.abs(b), 0) / Math.max(1, meanAdv.length),
            pgLoss: 0,
            kl: 0,
            clipFrac: 0,
            gradNorm: 0,
            tokens,
            seconds: 0,
          },
          createdAt: new Date().toISOString(),
        };
        const mine = await putJson(store, manifest);
        if (opts.updateDelayMs) {
          // A long update that heartbeats, as the real trainer does, so a killed trainer is noticed.
          for (let left = opts.updateDelayMs; left > 0; left -= 250) {
            try {
              Context.current().heartbeat();
            } catch { /* outside an activity */ }
            await new Promise((r) => setTimeout(r, Math.min(250, left)));
          }
        }
        const winner = await store.setNameIfAbsent(name, mine);
        if (winner.sha256 === mine.sha256) await opts.onCommit?.(req.runId, req.iteration);
        const m = await getJson(store, winner, CheckpointManifestSchema);
        return UpdateResultSchema.parse({
          runId: m.runId,
          iteration: m.iteration,
          version: m.version,
          checkpoint: winner,
          reused: winner.sha256 !== mine.sha256,
          metrics: m.metrics,
        });
      },
    },
  };
}
