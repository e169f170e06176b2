/**
 * The trainer hyperparameters that travel with every update, named once for the TypeScript side: the config
 * (`core/config.ts`) defines their defaults and checks, the wire schema (`core/trainer_contract.ts`) their
 * wire form, and the workflow sends exactly these keys ({@linkcode hyperparamsOf}). `tests/contracts/trainer_defaults.json`
 * is the bridge to Python: the config's defaults must equal it here, `TrainerConfig`'s defaults there. Pure (no
 * imports), so workflow code may use it.
 *
 * @module
 */

/** The hyperparameters sent with every update, in wire (camelCase) names; `seed` is added per iteration. */
export const TRAINER_HYPERPARAM_KEYS = [
  "lr",
  "klCoef",
  "clipLow",
  "clipHigh",
  "clipRatioC",
  "miniBatches",
  "loraRank",
  "loraAlpha",
  "maxGradNorm",
  "lossAgg",
  "rolloutIsCap",
  "rolloutIsVeto",
] as const;

/** One hyperparameter's wire name. */
export type TrainerHyperparam = (typeof TRAINER_HYPERPARAM_KEYS)[number];

/** How the policy-gradient loss is averaged over a mini-batch (`trainer/cm2_trainer/loss.py`). */
export const LOSS_AGG_MODES = ["token-mean", "seq-mean-token-mean"] as const;
/** One loss aggregation mode. */
export type LossAgg = (typeof LOSS_AGG_MODES)[number];

/** The hyperparameters as they go on the wire. */
export type TrainerHyperparams = {
  [K in TrainerHyperparam]: K extends "lossAgg" ? LossAgg : K extends "rolloutIsCap" ? number | null
  : number;
};

/** The trainer section of a run config as {@linkcode hyperparamsOf} reads it (`lossAgg` may be unset). */
export type TrainerSettings = Omit<TrainerHyperparams, "lossAgg"> & {
  readonly lossAgg?: LossAgg | undefined;
};

/**
 * The loss aggregation a run trains with: the config's, or else its reward preset's (`reference`: the released
 * run's per-trajectory mean, `seq-mean-token-mean`; the others: `token-mean`).
 */
export function lossAggOf(trainer: { readonly lossAgg?: LossAgg | undefined }, preset: string): LossAgg {
  return trainer.lossAgg ?? (preset === "reference" ? "seq-mean-token-mean" : "token-mean");
}

/** The wire hyperparameters of a run config: exactly the wire keys, with the preset's loss aggregation. */
export function hyperparamsOf(
  config: { readonly trainer: Readonly<TrainerSettings>; readonly cm2: { readonly preset: string } },
): TrainerHyperparams {
  const out: Record<string, unknown> = {};
  for (const k of TRAINER_HYPERPARAM_KEYS) out[k] = config.trainer[k as keyof TrainerSettings];
  out.lossAgg = lossAggOf(config.trainer, config.cm2.preset);
  return out as TrainerHyperparams;
}
