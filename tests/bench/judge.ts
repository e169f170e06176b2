/**
 * Judge benchmark (`deno task bench:judge`): how many judge calls the savings remove, and whether rewards stay
 * the same. Over a fixed set of episodes on the sample dataset (`data/sample/tooltalk_sample.jsonl`): every
 * record × {@linkcode MISTAKES} (the reference replayed with one kind of mistake each, TEST DOUBLE policy), judged
 * by the reading judge (TEST DOUBLE: it reads cm2's judge prompt and decides as a careful grader, never seeing a
 * program check), in three modes:
 *
 * - `exhaustive`: every (step, item) cell asked, checks ignored (the reference);
 * - `incremental`: cells skipped where no reward can read them, checks ignored;
 * - every saving on: incremental, with program-checked items answered by their checks, and items whose focus part
 *   is absent from the step answered false (`skipAbsentFocus`) (`checked_calls`).
 *
 * Rewards are compared per episode between `exhaustive` and every saving on (the default preset's reward R and
 * turn scores, within 1e-9).
 * The last line is one JSON object:
 * `{"episodes","exhaustive_calls","incremental_calls","checked_calls","call_ratio","reward_agreement","checked_share"}`
 * with `call_ratio` = checked_calls / exhaustive_calls, `reward_agreement` = share of episodes whose rewards
 * agree, `checked_share` = share of verdicts (every saving on) answered by a program.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { runEpisode } from "../../core/episode_loop.ts";
import type { EpisodeState } from "../../core/episode.ts";
import { episodeVerdicts } from "../../core/episode_judge.ts";
import type { TrajectoryRecord } from "../../core/records.ts";
import { computeAdvantages } from "../../core/rewards.ts";
import { sampleRecords, withoutChecks } from "../harness/training.ts";
import { echoingSimulator, MISTAKES, perturbedPolicy, readingJudge } from "../harness/reading_judge.ts";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

interface ModeResult {
  calls: number;
  states: EpisodeState[][];
  verdicts: number;
  checked: number;
}

/** Every record's episodes in one judging mode. */
export async function runMode(
  records: readonly TrajectoryRecord[],
  mode: "exhaustive" | "incremental",
  checks: boolean,
): Promise<ModeResult> {
  // The savings of cm2 beyond the reference come together: program checks and absent focus parts.
  const out: ModeResult = { calls: 0, states: [], verdicts: 0, checked: 0 };
  for (const record of records) {
    const used = checks ? record : withoutChecks(record);
    const group: EpisodeState[] = [];
    for (let e = 0; e < MISTAKES.length; e++) {
      const judge = readingJudge();
      const { state } = await runEpisode(used, {
        policy: perturbedPolicy(record, e),
        simulator: echoingSimulator(),
        judge,
      }, { hash: sha256, judge: { mode, skipAbsentFocus: checks }, maxUserTurns: 30, maxAssistantSteps: 30 });
      out.calls += judge.calls;
      out.checked += state.metrics.judgeCellsChecked ?? 0;
      out.verdicts += state.metrics.judgeVerdicts + (state.metrics.judgeCellsChecked ?? 0);
      group.push(state);
    }
    out.states.push(group);
  }
  return out;
}

/**
 * Share of episodes whose reward R and turn scores S_t (default preset) agree within 1e-9 between two modes. The
 * advantages are functions of these (group baselines over the same episodes), so they agree where these do.
 */
export function rewardAgreement(
  records: readonly TrajectoryRecord[],
  a: EpisodeState[][],
  b: EpisodeState[][],
): number {
  let same = 0;
  let total = 0;
  const close = (p: number, q: number) => Math.abs(p - q) <= 1e-9;
  records.forEach((record, r) => {
    const checklist = record.checklists[0]!;
    const score = (states: EpisodeState[]) =>
      computeAdvantages({ checklist, episodes: states.map((s) => episodeVerdicts(s)) }).episodes;
    const y = score(b[r]!);
    score(a[r]!).forEach((ex, e) => {
      const ey = y[e]!;
      total++;
      if (close(ex.reward, ey.reward) && ex.turnScores.every((s, t) => close(s, ey.turnScores[t]!))) same++;
    });
  });
  return total ? same / total : 1;
}

if (import.meta.main) {
  const records = await sampleRecords();
  const t0 = performance.now();
  const exhaustive = await runMode(records, "exhaustive", false);
  const incremental = await runMode(records, "incremental", false);
  const saving = await runMode(records, "incremental", true);
  const episodes = records.length * MISTAKES.length;
  const line = {
    episodes,
    exhaustive_calls: exhaustive.calls,
    incremental_calls: incremental.calls,
    checked_calls: saving.calls,
    call_ratio: Math.round((saving.calls / exhaustive.calls) * 1000) / 1000,
    reward_agreement: Math.round(rewardAgreement(records, exhaustive.states, saving.states) * 1000) / 1000,
    checked_share: Math.round((saving.checked / Math.max(1, saving.verdicts)) * 1000) / 1000,
  };
  console.log(
    `[bench] ${episodes} episodes in ${((performance.now() - t0) / 1000).toFixed(1)} s; incremental alone: ` +
      `ratio ${(incremental.calls / exhaustive.calls).toFixed(3)}, reward agreement ${
        rewardAgreement(records, exhaustive.states, incremental.states).toFixed(3)
      }`,
  );
  console.log(JSON.stringify(line));
}
