/**
 * The trainer hyperparameters that travel with every update, named once for the TypeScript side: the config
 * (`core/config.ts`) defines their defaults and checks, the wire schema (`core/trainer_contract.ts`) their
 * wire form, and the workflow copies exactly these keys. `tests/contracts/trainer_defaults.json` is the
 * bridge to Python: the config's defaults must equal it here, `TrainerConfig`'s defaults there. Pure (no
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
] as const;

/** One hyperparameter's wire name. */
export type TrainerHyperparam = (typeof TRAINER_HYPERPARAM_KEYS)[number];

/** The hyperparameters of a trainer config, exactly the wire keys. */
export function hyperparamsOf(
  trainer: Readonly<Record<TrainerHyperparam, number>>,
): Record<TrainerHyperparam, number> {
  const out = {} as Record<TrainerHyperparam, number>;
  for (const k of TRAINER_HYPERPARAM_KEYS) out[k] = trainer[k];
  return out;
}
