/**
 * Benchmark: the portable llama-server build (every CPU variant, picked at run time; what `task setup` makes)
 * against another build of the same source, side by side in one run, on the embedded model. Each round runs
 * both binaries once, alternating, on a ~1k-token prompt and a 64-token completion; it prints the median
 * prompt and decode tokens/s of each and their ratios as one JSON line.
 *
 * The other build is given by path. For the comparison in docs/decisions.md it was a native one, built by
 * hand for this machine only (cm2 itself never builds for the build machine's CPU), from `.cm2/llama.cpp/src` with
 * `cmake -B /tmp/native -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF && cmake --build /tmp/native
 * --target llama-server` (what cm2 built before the portable build).
 *
 * ```sh
 * deno run -A tests/bench/llama_build.ts --other /tmp/native/bin/llama-server --rounds 5 [--other-args=--no-repack]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { GGUF_PATH } from "../../scripts/paths.ts";
import { LLAMA_SERVER_BIN } from "../../scripts/llama_server_build.ts";
import { SMOKE_PROMPT, smokeTest } from "../../scripts/llama_server_check.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    other: { type: "string" },
    "other-args": { type: "string", default: "" },
    rounds: { type: "string", default: "5" },
    threads: { type: "string", default: "1" },
  },
});
if (!values.other) {
  console.error("usage: llama_build.ts --other PATH [--other-args=ARGS] [--rounds N] [--threads N]");
  Deno.exit(2);
}
const prompt = Array.from({ length: 6 }, () => SMOKE_PROMPT).join("\n");
const runs: Record<string, { decode: number[]; prompt: number[] }> = {
  portable: { decode: [], prompt: [] },
  other: { decode: [], prompt: [] },
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
for (let round = 0; round < Number(values.rounds); round++) {
  for (const which of round % 2 ? ["other", "portable"] : ["portable", "other"]) {
    const r = await smokeTest({
      binary: which === "portable" ? LLAMA_SERVER_BIN : values.other,
      args: which === "other" ? values["other-args"].split(/\s+/).filter(Boolean) : [],
      gguf: GGUF_PATH,
      prompt,
      nPredict: 64,
      ctx: 2048,
      threads: Number(values.threads),
    });
    if (!r.ok) throw new Error(`${which}: ${r.reason}\n${r.logTail}`);
    runs[which]!.decode.push(r.tokensPerSecond!);
    runs[which]!.prompt.push(r.promptTokensPerSecond!);
  }
}
const p = runs.portable!, o = runs.other!;
console.log(JSON.stringify({
  rounds: Number(values.rounds),
  threads: Number(values.threads),
  portable_decode_tps: Number(median(p.decode).toFixed(1)),
  other_decode_tps: Number(median(o.decode).toFixed(1)),
  portable_prompt_tps: Number(median(p.prompt).toFixed(1)),
  other_prompt_tps: Number(median(o.prompt).toFixed(1)),
  decode_ratio: Number((median(p.decode) / median(o.decode)).toFixed(3)),
  prompt_ratio: Number((median(p.prompt) / median(o.prompt)).toFixed(3)),
}));
