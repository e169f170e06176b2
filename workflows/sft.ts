/**
 * The durable cold-start SFT run `sftRun` (`cm2 sft`): store the config, resolve the datasets, and hand the
 * training to the Python trainer worker's `sftTrain` activity. The activity heartbeats every step and writes a
 * checkpoint every `sft.checkpointEvery` steps; when its worker dies, Temporal notices after the heartbeat
 * timeout and runs it again elsewhere, and it resumes from its last checkpoint without repeating a finished
 * step (the trainer's `sft.py`). Deterministic wiring only.
 *
 * @module
 */
import { defineQuery, proxyActivities, setHandler } from "@temporalio/workflow";
import type { Activities } from "../activities/mod.ts";
import type { RunConfig } from "../core/config.ts";
import type { Ref } from "../core/ref.ts";
import type { SftResult, TrainerActivities } from "../core/trainer_contract.ts";
import { STORE } from "./presets.ts";

const store = proxyActivities<Activities>(STORE);

/** Input of {@linkcode sftRun}. */
export interface SftRunInput {
  config: RunConfig;
}

/** What `sftStatus` returns (the step and loss of a running SFT are in its activity's heartbeat details). */
export interface SftStatus {
  name: string;
  phase: "preparing" | "training" | "done";
  dataset?: { ref: Ref; count: number; heldOutCount: number };
  result?: SftResult;
}

/** Query: the phase of an SFT run. */
export const sftStatusQuery = defineQuery<SftStatus>("sftStatus");

/** Runs cold-start SFT; see the module doc. */
export async function sftRun(input: SftRunInput): Promise<SftResult> {
  const { config } = input;
  const status: SftStatus = { name: config.name, phase: "preparing" };
  setHandler(sftStatusQuery, () => status);
  const { storeUrl } = await store.putConfig({ config });
  const ds = await store.sftPrepare({ config });
  status.dataset = { ref: ds.dataset, count: ds.count, heldOutCount: ds.heldOutCount };
  status.phase = "training";
  const trainer = proxyActivities<TrainerActivities>({
    taskQueue: config.trainer.taskQueue,
    startToCloseTimeout: "48 hours",
    heartbeatTimeout: `${config.trainer.heartbeatTimeoutS} seconds`,
    retry: {
      initialInterval: "5 seconds",
      maximumAttempts: 10,
      nonRetryableErrorTypes: ["InvalidBatch", "MissingArtifact", "StoreCorruption", "TrainingDiverged"],
    },
  });
  const { dataset: _dataset, heldOut: _heldOut, ...sft } = config.sft;
  const result = await trainer.sftTrain({
    runId: config.name,
    dataset: ds.dataset,
    heldOut: ds.heldOut,
    base: config.trainer.base,
    storeUrl,
    sft,
  });
  status.result = result;
  status.phase = "done";
  return result;
}
