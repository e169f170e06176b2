/**
 * How well a model labels checklists: runs the labeling prompt and checks of `core/labeling.ts` over a
 * few ToolTalk records against any OpenAI-compatible endpoint (by default the embedded llama.cpp
 * server, `serve/llama_server.ts` on 127.0.0.1:8766), with the same retry-with-feedback loop as the
 * `labelDataset` workflow but without Temporal or the store. Prints one JSON line:
 * `{"records":5,"validated":…,"first_try":…,"repaired":…,"rejected":…,"failed":…,"calls":…,…}`.
 *
 * Usage: `deno run -A tests/bench/label_local.ts [--base-url URL] [--model NAME] [--records 5]
 * [--pick shortest|first] [--attempts 3] [--json-mode schema|object|none] [--max-tokens 2048]
 * [--timeout-ms 600000] [--api-key-env VAR]`
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { z } from "zod";
import { importFiles } from "../../core/importers/mod.ts";
import {
  checkLabelText,
  formatLabelIssue,
  labelingMessages,
  type LabelIssue,
  renderLabelingInput,
  type RepairCounts,
} from "../../core/labeling.ts";
import { type ChatRequest, LlmError } from "../../core/llm_types.ts";
import { TurnBlockSchema } from "../../core/records.ts";
import { createChatModel } from "../../llm/client.ts";
import { jsonSchemaOf } from "../../llm/structured.ts";

const TOOLTALK = fileURLToPath(new URL("../../../shared/benchdata/tooltalk/data/tooltalk", import.meta.url));

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "base-url": { type: "string", default: "http://127.0.0.1:8766/v1" },
    model: { type: "string", default: "smollm2-135m-instruct" },
    records: { type: "string", default: "5" },
    pick: { type: "string", default: "shortest" },
    attempts: { type: "string", default: "3" },
    "json-mode": { type: "string", default: "schema" },
    "max-tokens": { type: "string", default: "2048" },
    "timeout-ms": { type: "string", default: "600000" },
    "api-key-env": { type: "string" },
  },
});

const started = performance.now();
const files = (await fs.readdir(TOOLTALK)).filter((f) => f.endsWith(".json")).sort();
const report = await importFiles(files.map((f) => path.join(TOOLTALK, f)), (p) => fs.readFile(p, "utf8"));
let records = report.records;
if (values.pick === "shortest") {
  records = [...records].sort((a, b) => renderLabelingInput(a).length - renderLabelingInput(b).length);
}
records = records.slice(0, Number(values.records));

const apiKey = values["api-key-env"] ? Deno.env.get(values["api-key-env"]) : undefined;
const model = createChatModel({
  role: "labeler",
  baseURL: values["base-url"],
  model: values.model,
  ...(apiKey ? { apiKey } : {}),
  timeoutMs: Number(values["timeout-ms"]),
  defaults: { temperature: 0.7, max_tokens: Number(values["max-tokens"]) },
});
const schema = jsonSchemaOf(z.array(TurnBlockSchema));
const maxAttempts = Number(values.attempts);

let validated = 0;
let firstTry = 0;
let repaired = 0;
let rejected = 0;
let failed = 0;
let calls = 0;
let promptTokens = 0;
let completionTokens = 0;
const repairs: RepairCounts = {};
const perRecord: { uuid: string; status: string; attempts: number; first_errors: string[] }[] = [];

for (const record of records) {
  let prior: { output: string; errors: LabelIssue[] } | undefined;
  let status = "rejected";
  let attempts = 0;
  let firstErrors: string[] = [];
  try {
    for (let a = 1; a <= maxAttempts; a++) {
      attempts = a;
      const req: ChatRequest = { messages: labelingMessages(record, prior) };
      if (values["json-mode"] === "schema") req.jsonSchema = { name: "checklist_turn_blocks", schema };
      if (values["json-mode"] === "object") req.jsonObject = true;
      const result = await model.complete(req);
      calls++;
      promptTokens += result.usage.promptTokens;
      completionTokens += result.usage.completionTokens;
      const check = checkLabelText(result.content, record, { truncated: result.finishReason === "length" });
      if (check.ok) {
        status = "labeled";
        validated++;
        if (a === 1) firstTry++;
        if (Object.keys(check.repairs).length > 0) repaired++;
        for (const [k, n] of Object.entries(check.repairs) as [keyof RepairCounts, number][]) {
          repairs[k] = (repairs[k] ?? 0) + n;
        }
        break;
      }
      if (a === 1) firstErrors = check.errors.slice(0, 3).map(formatLabelIssue);
      prior = { output: result.content, errors: check.errors };
    }
    if (status === "rejected") rejected++;
  } catch (err) {
    status = "failed";
    failed++;
    firstErrors = [err instanceof LlmError ? `${err.type}: ${err.message}` : String(err)];
  }
  perRecord.push({ uuid: record.uuid, status, attempts, first_errors: firstErrors });
}

console.log(JSON.stringify({
  records: records.length,
  validated,
  first_try: firstTry,
  repaired,
  rejected,
  failed,
  calls,
  prompt_tokens: promptTokens,
  completion_tokens: completionTokens,
  repairs,
  model: values.model,
  base_url: values["base-url"],
  seconds: Math.round((performance.now() - started) / 100) / 10,
  per_record: perRecord,
}));
