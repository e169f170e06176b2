/**
 * TEST DOUBLE — a test-only trainer worker activity. It implements the `updatePolicy` contract of
 * `core/trainer_contract.ts` without any model: it validates the request and the batch, records
 * every call, and returns a checkpoint ref, idempotently per (run, iteration) through the same
 * store pointer the Python trainer uses (`runs/<run>/checkpoints/it-<n>`). The real trainer is
 * `trainer/` (Python); the contract fixtures in `tests/contracts/` keep the two in step.
 *
 * @module
 */
import { type ArtifactStore, getJson, putJson } from "../store/mod.ts";
import {
  BatchSchema,
  type CheckpointManifest,
  CheckpointManifestSchema,
  type UpdateRequest,
  UpdateRequestSchema,
  type UpdateResult,
  UpdateResultSchema,
} from "../core/trainer_contract.ts";

/** What the test trainer saw. */
export interface TestTrainerLog {
  /** Every call, including retries. */
  calls: { runId: string; iteration: number; reused: boolean }[];
  /** Updates actually applied, per `run/iteration`. */
  applied: Map<string, number>;
}

/** Creates the test trainer's activities over a store (the same store the orchestrator uses). */
export function createTestTrainer(
  store: ArtifactStore,
  log: TestTrainerLog = { calls: [], applied: new Map() },
) {
  return {
    log,
    activities: {
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
        log.calls.push({ runId: req.runId, iteration: req.iteration, reused: false });
        const adapter = await putJson(store, {
          fake: "adapter",
          parent: req.parent,
          iteration: req.iteration,
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
        const winner = await store.setNameIfAbsent(name, mine);
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
