import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  BATCH_VERDICT_SCHEMA,
  batchVerdictSchema,
  fillSkipped,
  judgeBatchPrompt,
  judgeCacheKey,
  type JudgeItem,
  judgePrompt,
  judgeRequest,
  majority,
  parseVerdicts,
  roundCells,
  type SatMatrix,
  type SkipBasis,
  VERDICT_ANALYSIS_FIELDS,
  VERDICT_SCHEMA,
} from "../../core/judge.ts";
import {
  computeAdvantages,
  type EpisodeVerdicts,
  itemPassRate,
  resolveRewardOptions,
  type RewardItem,
  type RewardLevel,
  type RewardPreset,
  turnPassed,
} from "../../core/rewards.ts";
import { prng } from "../../core/sampling.ts";
import { skipBasisFor } from "../../core/episode_options.ts";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

const item: JudgeItem = {
  id: "C0",
  question: "Did the assistant call get_weather for Paris?",
  focus_on: "assistant.tool_calls",
  pass_condition: "A get_weather call with city Paris.",
  failure_examples: ["Calls it for Lyon", "Answers without a call é"],
  evidence: [{ turn: 0, step: 1, from: "assistant.tool_calls", snippet: '{"city": "Paris"}' }],
};
const ctx = {
  previous: "Role: system\ncontent: Be brief.\n",
  current: "# Turn: 0\nRole: user\ncontent: Hi\n",
};

Deno.test("judgePrompt() carries every criterion field and both transcript sections in order", () => {
  const p = judgePrompt(item, ctx);
  const order = [
    "# Role\n",
    "# Objective\n",
    "# Criteria\n**Question:** Did the assistant call get_weather for Paris?\n",
    "**Focus on:** assistant.tool_calls\n",
    "**Pass condition:** A get_weather call with city Paris.\n",
    '**Failure examples:** [\n  "Calls it for Lyon",\n  "Answers without a call \\u00e9"\n]\n',
    '**Reference snippet:** [\n  "{\\"city\\": \\"Paris\\"}"\n]\n',
    "# Previous Messages (context only, not evaluated)\nRole: system\ncontent: Be brief.\n# Current Messages to Evaluate\n" +
    "# Turn: 0\nRole: user\ncontent: Hi\n",
    "# Rules about tool calls\n",
    "# Evaluation Steps",
    "# Output Format\n",
  ];
  let at = 0;
  for (const part of order) {
    const found = p.indexOf(part, at);
    assert.ok(found >= at, `missing or out of order: ${JSON.stringify(part)}`);
    at = found + part.length;
  }
  const fields = [...VERDICT_ANALYSIS_FIELDS, "answer"].map((f) => p.lastIndexOf(`"${f}"`));
  assert.deepEqual([...fields].sort((a, b) => a - b), fields, "analysis fields come before answer");
});

Deno.test("VERDICT_SCHEMA lists the four analysis fields before the boolean answer", () => {
  assert.deepEqual(VERDICT_SCHEMA.required, [...VERDICT_ANALYSIS_FIELDS, "answer"]);
  assert.deepEqual(Object.keys(VERDICT_SCHEMA.properties as object), [...VERDICT_ANALYSIS_FIELDS, "answer"]);
  assert.equal(VERDICT_SCHEMA.additionalProperties, false);
});

Deno.test("judgeRequest() uses the one-item schema for one item and the batch schema for several", () => {
  const one = judgeRequest([item], ctx, { temperature: 0.6 });
  assert.equal(one.jsonSchema?.name, "evaluation_verdict");
  assert.deepEqual(one.sampling, { temperature: 0.6 });
  assert.equal(one.messages.length, 1);
  assert.equal(one.messages[0]!.role, "user");
  const second = { ...item, id: "C1", question: "Was the reply short?" };
  const batch = judgeRequest([item, second], ctx);
  assert.deepEqual(batch.jsonSchema, { name: "evaluation_verdicts", schema: batchVerdictSchema(2) });
  // the schema fixes the number of verdicts, so a grammar-constrained judge cannot stop early
  const verdicts = (batch.jsonSchema!.schema.properties as Record<string, Record<string, unknown>>).verdicts!;
  assert.deepEqual([verdicts.minItems, verdicts.maxItems], [2, 2]);
  assert.equal(
    (BATCH_VERDICT_SCHEMA.properties as Record<string, Record<string, unknown>>).verdicts!.minItems,
    undefined,
  );
  assert.equal(batch.sampling, undefined);
  const text = judgeBatchPrompt([item, second], ctx);
  assert.ok(text.indexOf("## Criterion C0\n") < text.indexOf("## Criterion C1\n"));
  assert.ok(text.includes("in the order C0, C1"));
  assert.throws(() => judgeRequest([], ctx), /at least 1 item/);
});

Deno.test("judgeCacheKey() is keyed on what is asked: model, rendered request, default sampling, vote", () => {
  const request = judgeRequest([item], ctx);
  const base = { model: "judge-a", request, vote: 0 };
  const k = judgeCacheKey(sha256, base);
  assert.match(k, /^[0-9a-f]{64}$/);
  assert.equal(judgeCacheKey(sha256, { ...base, request: judgeRequest([{ ...item }], ctx) }), k);
  assert.notEqual(judgeCacheKey(sha256, { ...base, model: "judge-b" }), k);
  assert.notEqual(judgeCacheKey(sha256, { ...base, vote: 1 }), k);
  assert.notEqual(
    judgeCacheKey(sha256, { ...base, request: judgeRequest([item], { ...ctx, current: ctx.current + "x" }) }),
    k,
  );
  assert.notEqual(
    judgeCacheKey(sha256, { ...base, request: judgeRequest([{ ...item, pass_condition: "o" }], ctx) }),
    k,
  );
  assert.notEqual(judgeCacheKey(sha256, { ...base, defaults: { temperature: 1 } }), k);
  // One word of the prompt changed, with the same prompt-version label: a different key.
  const edited = {
    ...request,
    messages: [{ ...request.messages[0]!, content: request.messages[0]!.content.replace("the", "a") }],
  };
  assert.notEqual(request.messages[0]!.content, edited.messages[0]!.content);
  assert.notEqual(judgeCacheKey(sha256, { ...base, request: edited }), k);
});

const res = (content: string) => ({ content, finishReason: "stop" as const });

Deno.test("parseVerdicts() reads one verdict, accepting 1/0 as Python does", () => {
  assert.deepEqual(parseVerdicts(res('{"analysis_of_pass_condition": "ok", "answer": true}'), ["C0"]), {
    ok: true,
    answers: [true],
  });
  assert.deepEqual(parseVerdicts(res('{"answer": 0}'), ["C0"]), { ok: true, answers: [false] });
  assert.equal(parseVerdicts(res('{"answer": "yes"}'), ["C0"]).ok, false);
  assert.equal(parseVerdicts(res("The answer is yes"), ["C0"]).ok, false);
  const cut = parseVerdicts({ content: '{"answ', finishReason: "length" }, ["C0"]);
  assert.ok(!cut.ok && /token limit/.test(cut.error));
});

Deno.test("parseVerdicts() matches batched verdicts by item id, else by position", () => {
  const byId = '{"verdicts": [{"item_id": "C2", "answer": false}, {"item_id": "C0", "answer": true}]}';
  assert.deepEqual(parseVerdicts(res(byId), ["C0", "C2"]), { ok: true, answers: [true, false] });
  assert.deepEqual(parseVerdicts(res('{"verdicts": [{"answer": false}, {"answer": true}]}'), ["C0", "C2"]), {
    ok: true,
    answers: [false, true],
  });
  assert.equal(parseVerdicts(res('{"verdicts": [{"answer": true}]}'), ["C0", "C2"]).ok, false);
  assert.equal(
    parseVerdicts(
      res('{"verdicts": [{"item_id": "C9", "answer": true}, {"item_id": "C0", "answer": true}]}'),
      [
        "C0",
        "C2",
      ],
    ).ok,
    false,
  );
});

Deno.test("majority() needs strictly more than half; ties are false", () => {
  assert.equal(majority([true]), true);
  assert.equal(majority([true, false]), false);
  assert.equal(majority([true, true, false]), true);
  assert.equal(majority([false, false, true]), false);
  assert.throws(() => majority([]), /0 votes/);
});

const plan = [{ id: "C0", dependence: [] }, { id: "C1", dependence: ["C0"] }, { id: "C2", dependence: [] }];
const blank = (steps: number): SatMatrix => Array.from({ length: steps }, () => [null, null, null]);

Deno.test("roundCells() asks for every cell in exhaustive mode and one step at a time in incremental mode", () => {
  assert.equal(roundCells(blank(3), "exhaustive").length, 9);
  assert.deepEqual(roundCells(blank(3), "incremental"), [{ step: 0, item: 0 }, { step: 0, item: 1 }, {
    step: 0,
    item: 2,
  }]);
  assert.deepEqual(fillSkipped(blank(2), plan, "exhaustive").filled, 0);
});

Deno.test("fillSkipped() skips an item once it paid and its dependents paid, under every basis's rule", () => {
  // step 0: C0 true (pays: no dependencies), C1 false, C2 false
  const sat: SatMatrix = [[true, false, false], [null, null, null], [null, null, null]];
  for (const basis of ["completed", "paid"] as const) {
    const r = fillSkipped(sat, plan, "incremental", basis);
    assert.deepEqual(
      r.sat[1],
      [null, null, null],
      `${basis}: C1 reads C0's verdict before step 1, so C0 is asked`,
    );
    assert.equal(r.filled, 0);
    // step 1: C1 flips while C0 held before the step, so C1 pays; now C0 and C1 are done
    r.sat[1] = [true, true, false];
    const r2 = fillSkipped(r.sat, plan, "incremental", basis);
    assert.deepEqual(r2.sat[2], [true, true, null], basis);
    assert.equal(r2.filled, 2);
    assert.deepEqual(roundCells(r2.sat, "incremental"), [{ step: 2, item: 2 }]);
  }
  // C0 true at step 0, false at step 1, C1 true at step 2: completed (C0 completed earlier) but not paid
  // (C0 was false before step 2), so only the satisfied basis may skip C1 at step 3.
  const gap: SatMatrix = [[true, false, false], [false, false, false], [false, true, false], [
    null,
    null,
    null,
  ]];
  assert.deepEqual(fillSkipped(gap, plan, "incremental", "completed").sat[3], [null, null, null]);
  assert.deepEqual(fillSkipped(gap, plan, "incremental", "paid").sat[3], [null, null, null]);
  assert.deepEqual(fillSkipped(gap, plan, "incremental", "satisfied").sat[3], [true, true, null]);
  const loose = fillSkipped(sat, plan, "incremental", "satisfied");
  assert.deepEqual(loose.sat[1], [true, null, null], "the satisfied basis ignores dependencies");
});

// ---- exhaustive vs incremental equivalence on random verdict matrices ----

function randomChecklist(r: () => number): RewardItem[][] {
  const turns = 1 + Math.floor(r() * 3);
  return Array.from({ length: turns }, () => {
    const n = 1 + Math.floor(r() * 5);
    const raw = Array.from({ length: n }, () => 0.1 + r());
    const total = raw.reduce((a, b) => a + b, 0);
    return raw.map((w, c) => ({
      id: `C${c}`,
      weight: w / total,
      dependence: Array.from({ length: c }, (_, d) => `C${d}`).filter(() => r() < 0.3),
      required_for_next_turn: r() < 0.4,
    }));
  });
}

function judgeIncrementally(
  oracle: boolean[][],
  items: RewardItem[],
  basis: SkipBasis,
): { sat: boolean[][]; asked: number } {
  let sat: SatMatrix = oracle.map((row) => row.map(() => null));
  let asked = 0;
  for (;;) {
    sat = fillSkipped(sat, items, "incremental", basis).sat;
    const cells = roundCells(sat, "incremental");
    if (cells.length === 0) break;
    for (const { step, item } of cells) sat[step]![item] = oracle[step]![item]!;
    asked += cells.length;
  }
  return { sat: sat.map((row) => row.map((v) => v === true)), asked };
}

Deno.test("incremental judging gives the same gates, rewards and advantages as exhaustive judging", () => {
  const r = prng(20260126);
  const presets: RewardPreset[] = ["reference", "paper", "fixed"];
  const levels: RewardLevel[] = ["trajectory", "turn", "step"];
  const asked = { completed: 0, paid: 0 };
  let total = 0;
  for (let trial = 0; trial < 150; trial++) {
    const checklist = randomChecklist(r);
    const exhaustive: EpisodeVerdicts[] = [];
    const byBasis: Record<SkipBasis, EpisodeVerdicts[]> = { completed: [], paid: [], satisfied: [] };
    for (let e = 0; e < 6; e++) {
      const reached = 1 + Math.floor(r() * checklist.length);
      const ok = r() < 0.9;
      const turns = Array.from({ length: reached }, (_, t) => {
        const items = checklist[t]!;
        const steps = 1 + Math.floor(r() * 4);
        const oracle = Array.from({ length: steps }, () => items.map(() => r() < 0.45));
        return { items, oracle, complete: t < reached - 1 || r() < 0.7, base: 100 * t };
      });
      const build = (sats: boolean[][][]): EpisodeVerdicts => ({
        ok,
        turns: turns.map((t, k) => ({
          complete: t.complete,
          steps: sats[k]!.map((sat, s) => ({ messageIndex: t.base + s, sat })),
        })),
      });
      exhaustive.push(build(turns.map((t) => t.oracle)));
      for (const basis of ["completed", "paid", "satisfied"] as const) {
        const judged = turns.map((t) => judgeIncrementally(t.oracle, t.items, basis));
        byBasis[basis].push(build(judged.map((j) => j.sat)));
        judged.forEach((j, k) => {
          const rows = (rowsOf: boolean[][]) => rowsOf.map((sat) => ({ sat }));
          assert.equal(
            turnPassed(turns[k]!.items, rows(j.sat)),
            turnPassed(turns[k]!.items, rows(turns[k]!.oracle)),
          );
          if (basis !== "satisfied") asked[basis] += j.asked;
          if (basis === "completed") total += turns[k]!.oracle.length * turns[k]!.items.length;
        });
      }
    }
    const timings = [undefined, "pre-step-verdicts", "before-step", "item-order"] as const;
    for (const preset of presets) {
      for (const level of levels) {
        for (const dependencyTiming of timings) {
          const opts = { preset, level, minGroupSupport: 0, dependencyTiming };
          const want = computeAdvantages({ checklist, episodes: exhaustive }, opts).episodes;
          const where = `${preset}/${level}/${dependencyTiming ?? "preset"} in trial ${trial}`;
          assert.deepEqual(
            computeAdvantages({ checklist, episodes: byBasis.completed }, opts).episodes,
            want,
            where,
          );
          const widest = skipBasisFor(resolveRewardOptions(opts));
          assert.deepEqual(
            computeAdvantages({ checklist, episodes: byBasis[widest] }, opts).episodes,
            want,
            where,
          );
          if (preset === "reference" && level !== "step" && dependencyTiming === undefined) {
            // The "satisfied" fill moves where an item completes in the walk, never what it pays.
            const paidOnly = (eps: typeof want) =>
              eps.map((e) => ({ ...e, items: e.items.map((row) => row.map((x) => x.reward)) }));
            assert.deepEqual(
              paidOnly(computeAdvantages({ checklist, episodes: byBasis.satisfied }, opts).episodes),
              paidOnly(want),
            );
          }
        }
      }
    }
    for (const dependencies of ["ignore", "pre-step-verdicts", "before-step", "item-order"] as const) {
      const basis = dependencies === "pre-step-verdicts" ? "paid" : "completed";
      assert.deepEqual(
        itemPassRate(checklist, byBasis[basis], { dependencies }),
        itemPassRate(checklist, exhaustive, { dependencies }),
      );
    }
  }
  assert.ok(asked.completed < total, `incremental judging asked ${asked.completed} of ${total} cells`);
  assert.ok(
    asked.paid <= asked.completed,
    `the paid basis asked ${asked.paid}, completed ${asked.completed}`,
  );
});

Deno.test("the judge and simulator roles default to the released run's token budgets (6 000 and 8 000)", async () => {
  const { parseRunConfig } = await import("../../core/config.ts");
  const parsed = parseRunConfig({});
  assert.ok(parsed.ok);
  assert.equal(parsed.config.models.judge.sampling.max_tokens, 6000);
  assert.equal(parsed.config.models.simulator.sampling.max_tokens, 8000);
});
