/**
 * Pipeline recipes (`cm2 pipeline recipe.json`): CM2's recipe (§4, App. .1–.4) as named stages run in order,
 * each stage's output dataset feeding the next. The recipe names the input (a file or a stored dataset), the
 * run config its model-backed stages use, and the stages with their options.
 *
 * Dataset names a pipeline `<name>` writes: `<name>-raw` (an imported file), `<name>-filtered` (rule filter),
 * `<name>-llm` (LLM filter, `filter/<name>-llm`), `<name>-cot` (CoT compression, `compress/<name>-cot`),
 * `<name>-sft` / `<name>-rl` / `<name>-heldout` (split), `<name>-rl-labeled` (labeling, `label/…`); the SFT
 * run is `sft/<name>`, the RL run `run/<name>`. The paper's order: filter, filter-llm, compress-cot, split,
 * sft, label, rl.
 *
 * Pure, no I/O.
 *
 * @module
 */
import { z } from "zod";

const Name = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "must be lowercase letters, digits and dashes");
const Criteria = z.array(z.string().min(1));
const Count = z.number().int().min(0);

/** One stage of a recipe; the options of each default to the CLI's. */
export const PipelineStageSchema = z.discriminatedUnion("stage", [
  z.object({ stage: z.literal("filter"), disable: Criteria.optional(), enable: Criteria.optional() })
    .strict(),
  z.object({ stage: z.literal("filter-llm") }).strict(),
  z.object({ stage: z.literal("compress-cot"), target: z.number().gt(0).max(1).optional() }).strict(),
  z.object({
    stage: z.literal("split"),
    seed: z.number().int().optional(),
    sft: Count.optional(),
    rl: Count.optional(),
    heldOut: Count.optional(),
    minTurns: Count.optional(),
    minTools: Count.optional(),
  }).strict(),
  z.object({ stage: z.literal("label"), variants: z.number().int().positive().optional() }).strict(),
  z.object({ stage: z.literal("sft") }).strict(),
  z.object({
    stage: z.literal("rl"),
    /**
     * Also validate the base model without the SFT adapter (run `<name>-base`, no update) on the same held-out
     * records, so the report shows the gain over the raw base model as well as over the SFT start.
     */
    baseline: z.boolean().optional(),
  }).strict(),
]);

/** A pipeline recipe. */
export const PipelineRecipeSchema = z.object({
  /** Names the pipeline (`pipeline/<name>`), its datasets and its SFT and RL runs. */
  name: Name,
  /** A dataset file (imported first) or `datasets/<name>` in the store. */
  input: z.string().min(1),
  /** The run config (models, `sft`, `cm2`, `trainer`) of the model-backed stages; default: the defaults. */
  config: z.string().min(1).optional(),
  stages: z.array(PipelineStageSchema).min(1),
}).strict().superRefine((recipe, ctx) => {
  const kinds = recipe.stages.map((s) => s.stage);
  kinds.forEach((k, i) => {
    if (kinds.indexOf(k) !== i) {
      ctx.addIssue({ code: "custom", path: ["stages", i], message: `stage ${k} appears twice` });
    }
  });
  const at = (k: string) => kinds.indexOf(k as PipelineStage["stage"]);
  const split = at("split");
  for (const k of ["filter", "filter-llm", "compress-cot"] as const) {
    if (at(k) >= 0 && split >= 0 && at(k) > split) {
      ctx.addIssue({ code: "custom", path: ["stages", at(k)], message: `stage ${k} must come before split` });
    }
  }
  for (const k of ["sft", "label", "rl"] as const) {
    if (at(k) >= 0 && split >= 0 && at(k) < split) {
      ctx.addIssue({ code: "custom", path: ["stages", at(k)], message: `stage ${k} must come after split` });
    }
  }
  if (at("sft") >= 0 && split < 0) {
    ctx.addIssue({
      code: "custom",
      path: ["stages", at("sft")],
      message: "stage sft needs a split stage before it",
    });
  }
  if (at("rl") >= 0 && at("sft") > at("rl")) {
    ctx.addIssue({ code: "custom", path: ["stages", at("sft")], message: "stage sft must come before rl" });
  }
});

export type PipelineStage = z.infer<typeof PipelineStageSchema>;
export type PipelineRecipe = z.infer<typeof PipelineRecipeSchema>;

/** Parses a recipe; every problem names its path. */
export function parsePipelineRecipe(
  raw: unknown,
): { ok: true; recipe: PipelineRecipe } | { ok: false; issues: string[] } {
  const r = PipelineRecipeSchema.safeParse(raw);
  if (r.success) return { ok: true, recipe: r.data };
  return { ok: false, issues: r.error.issues.map((i) => `${i.path.join(".") || "(recipe)"}: ${i.message}`) };
}
