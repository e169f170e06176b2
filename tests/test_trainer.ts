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
export function createTestTrainer(store: ArtifactStore, log: TestTrainerLog = { calls: [], applied: new Map() }) {
  return {
    log,
    activities: {
      async updatePolicy(raw: UpdateRequest): Promise<UpdateResult> {
        const req = UpdateRequestSchema.parse(raw);
        const name = `runs/${req.runId}/checkpoints/it-${req.iteration}`;
        const existing = await store.getName(name);
        if (existing) {
          log.calls.push({ runId: req.runId, iteration: req.iteration, reused: true });
          const manifest = await getJson<{ result: UpdateResult }>(store, existing);
          return { ...manifest.result, reused: true };
        }
        const batch = BatchSchema.parse(await getJson(store, req.batch));
        const tokens = batch.samples.reduce((n, s) => n + s.messages.length, 0);
        const meanAdv = batch.samples.flatMap((s) => s.advantages.map((a) => a.advantage));
        const key = `${req.runId}/${req.iteration}`;
        log.applied.set(key, (log.applied.get(key) ?? 0) + 1);
        log.calls.push({ runId: req.runId, iteration: req.iteration, reused: false });
        const adapter = await putJson(store, { fake: "adapter", parent: req.parent, iteration: req.iteration });
        const result: UpdateResult = {
          runId: req.runId,
          iteration: req.iteration,
          version: req.iteration + 1,
          checkpoint: adapter,
          reused: false,
          metrics: {
            loss: meanAdv.reduce((a, b) => a + Math.abs(b), 0) / Math.max(1, meanAdv.length),
            pgLoss: 0,
            kl: 0,
            clipFrac: 0,
            gradNorm: 0,
            tokens,
            seconds: 0,
          },
        };
        const manifestRef = await putJson(store, { schema: "cm2.checkpoint/v1", result: { ...result } });
        const winner = await store.setNameIfAbsent(name, manifestRef);
        const stored = await getJson<{ result: UpdateResult }>(store, winner);
        return UpdateResultSchema.parse({ ...stored.result, checkpoint: stored.result.checkpoint });
      },
    },
  };
}
