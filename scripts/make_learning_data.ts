/**
 * Regenerates `data/learning/tool_tasks.jsonl`, the dataset of the learning benchmark (`deno task bench:learning`):
 * short single-turn tool tasks that the embedded 135M policy can learn, with fully program-checked checklists,
 * so the reward is exact and cheap.
 *
 * Each record offers the same three short tools (`get_weather`, `get_time`, `convert_currency`); the user asks
 * one question that needs exactly one of them. The reference trajectory is: one call with the right arguments,
 * the tool's JSON result, a one-sentence reply that states the result. The checklist (one turn) has three
 * checked items:
 *
 * - C0 (0.4, required): the call to the right tool with the right arguments (loose text comparison);
 * - C1 (0.2): that call returned a result that is not an error;
 * - C2 (0.4, depends on C1): the reply states the key value of the latest result of that tool
 *   (`from_result`, so a simulated result counts as what the policy saw).
 *
 * Every (tool, entity) pair appears once, so no two records share a question target: a held-out record is never
 * a paraphrase of a training record. Deterministic: a fixed seed gives the same bytes. The cities, currencies and
 * phrasings are written for cm2 (no third-party data).
 *
 * Usage: `deno run --allow-read --allow-write scripts/make_learning_data.ts [--out FILE] [--check]`.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { prng } from "../core/sampling.ts";
import { type ChecklistItem, type TrajectoryRecord, validateRecord } from "../core/records.ts";
import type { Condition } from "../core/checks.ts";

const CITIES = [
  "Paris",
  "Berlin",
  "Madrid",
  "Rome",
  "Lisbon",
  "Vienna",
  "Prague",
  "Warsaw",
  "Oslo",
  "Stockholm",
  "Helsinki",
  "Dublin",
  "London",
  "Amsterdam",
  "Brussels",
  "Zurich",
  "Athens",
  "Istanbul",
  "Cairo",
  "Nairobi",
  "Lagos",
  "Accra",
  "Casablanca",
  "Dubai",
  "Mumbai",
  "Delhi",
  "Bangkok",
  "Hanoi",
  "Singapore",
  "Jakarta",
  "Manila",
  "Seoul",
  "Tokyo",
  "Osaka",
  "Beijing",
  "Shanghai",
  "Sydney",
  "Melbourne",
  "Auckland",
  "Toronto",
  "Montreal",
  "Vancouver",
  "Chicago",
  "Boston",
  "Denver",
  "Seattle",
  "Miami",
  "Houston",
  "Mexico City",
  "Lima",
  "Bogota",
  "Santiago",
  "Buenos Aires",
  "Montevideo",
  "Havana",
  "Reykjavik",
  "Tallinn",
  "Riga",
  "Vilnius",
  "Budapest",
];
const CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "INR"];
/** Units of each currency per US dollar (round, made-up but plausible). */
const PER_USD: Record<string, number> = {
  USD: 1,
  EUR: 0.92,
  GBP: 0.79,
  JPY: 150,
  CHF: 0.88,
  CAD: 1.36,
  AUD: 1.52,
  SEK: 10.5,
  NOK: 10.7,
  INR: 83,
};
const SKIES = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"];

const SYSTEM =
  "You are a helpful assistant. Use a tool when the user asks for live data, then answer in one sentence.";

const TOOLS: TrajectoryRecord["tools"] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather in a city.",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
  {
    type: "function",
    function: {
      name: "get_time",
      description: "Current local time in a city.",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
  {
    type: "function",
    function: {
      name: "convert_currency",
      description: "Convert an amount between currencies.",
      parameters: {
        type: "object",
        properties: {
          amount: { type: "number" },
          from: { type: "string", description: "ISO code, e.g. USD" },
          to: { type: "string", description: "ISO code, e.g. EUR" },
        },
        required: ["amount", "from", "to"],
      },
    },
  },
];

const WEATHER_ASKS = [
  "What is the weather in {city} right now?",
  "How is the weather in {city} today?",
  "Is it warm in {city} at the moment?",
  "What's it like outside in {city}?",
];
const TIME_ASKS = [
  "What time is it in {city}?",
  "Can you tell me the local time in {city}?",
  "What is the current time in {city}?",
];
const CONVERT_ASKS = [
  "How much is {amount} {from} in {to}?",
  "Convert {amount} {from} to {to}, please.",
  "What is {amount} {from} worth in {to}?",
];

interface Task {
  tool: "get_weather" | "get_time" | "convert_currency";
  key: string;
  ask: string;
  args: Record<string, unknown>;
  result: Record<string, unknown>;
  /** The result field the reply must state. */
  field: string;
  reply: string;
}

function tasks(seed: number): Task[] {
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const fill = (t: string, v: Record<string, string | number>) =>
    t.replace(/\{(\w+)\}/g, (_, k: string) => String(v[k]));
  const out: Task[] = [];
  for (const city of CITIES) {
    const temp = Math.round(rand() * 40 - 5);
    const sky = pick(SKIES);
    out.push({
      tool: "get_weather",
      key: `weather/${city}`,
      ask: fill(pick(WEATHER_ASKS), { city }),
      args: { city },
      result: { city, temp_c: temp, sky },
      field: "temp_c",
      reply: `It is ${temp}°C and ${sky} in ${city} right now.`,
    });
    const time = `${String(Math.floor(rand() * 24)).padStart(2, "0")}:${
      String(Math.floor(rand() * 60)).padStart(2, "0")
    }`;
    out.push({
      tool: "get_time",
      key: `time/${city}`,
      ask: fill(pick(TIME_ASKS), { city }),
      args: { city },
      result: { city, local_time: time },
      field: "local_time",
      reply: `It is ${time} in ${city}.`,
    });
  }
  for (const from of CURRENCIES) {
    for (const to of CURRENCIES) {
      if (from === to) continue;
      const amount = pick([5, 10, 20, 25, 50, 75, 100, 200, 250, 500]);
      const converted = Math.round((amount / PER_USD[from]!) * PER_USD[to]! * 100) / 100;
      out.push({
        tool: "convert_currency",
        key: `convert/${from}-${to}`,
        ask: fill(pick(CONVERT_ASKS), { amount, from, to }),
        args: { amount, from, to },
        result: { amount: converted, currency: to },
        field: "amount",
        reply: `${amount} ${from} is ${converted} ${to}.`,
      });
    }
  }
  return out;
}

function item(
  id: string,
  over: Partial<ChecklistItem> & Pick<ChecklistItem, "focus_on" | "question">,
): ChecklistItem {
  return {
    id,
    evidence: [],
    pass_condition: "",
    failure_examples: [],
    required_for_next_turn: false,
    dependence: [],
    weight: 0,
    ...over,
  };
}

function record(task: Task): TrajectoryRecord {
  const argsText = JSON.stringify(task.args);
  const resultText = JSON.stringify(task.result);
  const equal = Object.fromEntries(Object.entries(task.args).map(([k, v]) => [k, { const: v }]));
  const call: Condition = { kind: "call", tool: task.tool, equal, loose: true } as Condition;
  const named = `${task.tool}(${argsText})`;
  const checklist: ChecklistItem[] = [
    item("C0", {
      evidence: [{ turn: 0, step: 1, from: "assistant.tool_calls", snippet: named }],
      focus_on: "assistant.tool_calls",
      question: `Does the assistant call ${task.tool} with arguments ${argsText}?`,
      pass_condition: `A call to ${task.tool} with ${argsText} (text case and spacing may differ).`,
      failure_examples: [`No call to ${task.tool}.`, `${task.tool} is called with other arguments.`],
      required_for_next_turn: true,
      weight: 0.4,
      check: { v: 1, pass: call },
    }),
    item("C1", {
      evidence: [{ turn: 0, step: 2, from: "tool.content", snippet: resultText }],
      focus_on: "tool.content",
      question: `Does that ${task.tool} call return a result that is not an error?`,
      pass_condition: `The call to ${task.tool} with ${argsText} returns a result without an error.`,
      failure_examples: [`The ${task.tool} call fails.`],
      weight: 0.2,
      check: { v: 1, pass: { ...call, returns: "ok" } as Condition },
    }),
    item("C2", {
      evidence: [{ turn: 0, step: 3, from: "assistant.content.user_visible_reply", snippet: task.reply }],
      focus_on: "assistant.content.user_visible_reply",
      question: `Does the reply state the ${task.field} that ${task.tool} returned?`,
      pass_condition: `The reply to the user contains the ${task.field} value of the ${task.tool} result.`,
      failure_examples: ["The reply states another value.", "There is no reply."],
      dependence: ["C1"],
      weight: 0.4,
      check: {
        v: 1,
        pass: { kind: "reply", contains: [{ from_result: { tool: task.tool, path: task.field } }] },
      },
    }),
  ];
  return {
    uuid: `learn-${task.key.replace(/[^A-Za-z0-9]+/g, "-").toLowerCase()}`,
    tools: TOOLS,
    messages: [
      { role: "system", content: SYSTEM, tool_calls: [] },
      { role: "user", content: task.ask, tool_calls: [] },
      {
        role: "assistant",
        content: "",
        tool_calls: [{ id: "call_0", type: "function", function: { name: task.tool, arguments: argsText } }],
      },
      { role: "tool", content: resultText, tool_call_id: "call_0", tool_calls: [] },
      { role: "assistant", content: task.reply, tool_calls: [] },
    ],
    checklists: [[checklist]],
    meta: { source: "cm2 learning tasks (scripts/make_learning_data.ts)", task: task.key },
  };
}

/** The dataset's JSONL text: every task once, in a seeded order. */
export function buildLearningData(seed = 7): string {
  const all = tasks(seed);
  const rand = prng(seed + 1);
  const order = all.map((t) => ({ t, k: rand() })).sort((a, b) => a.k - b.k).map((x) => x.t);
  return order.map((task) => {
    const v = validateRecord(record(task));
    if (!v.ok) {
      throw new Error(`Learning record ${task.key} does not validate: ${JSON.stringify(v.issues[0])}`);
    }
    return JSON.stringify(v.record);
  }).join("\n") + "\n";
}

if (import.meta.main) {
  const args = [...Deno.args];
  const at = args.indexOf("--out");
  const out = at >= 0
    ? args[at + 1]!
    : fileURLToPath(new URL("../data/learning/tool_tasks.jsonl", import.meta.url));
  const text = buildLearningData();
  if (args.includes("--check")) {
    const current = await Deno.readTextFile(out).catch(() => "");
    if (current !== text) {
      console.error(`${out} is not current; run scripts/make_learning_data.ts`);
      Deno.exit(1);
    }
    console.log(`${out} is current`);
  } else {
    await Deno.mkdir(fileURLToPath(new URL("../data/learning/", import.meta.url)), { recursive: true });
    await Deno.writeTextFile(out, text);
    console.log(`Wrote ${text.trim().split("\n").length} records to ${out}`);
  }
}
