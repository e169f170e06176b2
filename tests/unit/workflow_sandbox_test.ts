/**
 * Guards the workflow sandbox: code that runs in a workflow (everything `workflows/` imports at run time,
 * followed through every file) may use `@temporalio/workflow` and pure modules of `workflows/` and `core/`
 * only. Type-only imports are erased and may name anything. A file that imports `node:*`, Deno, the store, the
 * LLM client or an npm package other than the workflow SDK would break determinism or the bundle; this test
 * names the chain that brought it in.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { ROOT } from "../../scripts/paths.ts";

/** The runtime (non-type) import specifiers of a TypeScript source. */
export function runtimeImports(source: string): string[] {
  const out: string[] = [];
  const re = /^\s*(import|export)\s+(type\s+)?([^;]*?)\s*from\s*["']([^"']+)["']/gms;
  for (const m of source.matchAll(re)) {
    if (m[2]) continue; // import type … / export type …
    const clause = m[3] ?? "";
    const braces = clause.match(/^\{([^}]*)\}$/s);
    if (braces) {
      const names = braces[1]!.split(",").map((s) => s.trim()).filter(Boolean);
      if (names.length > 0 && names.every((n) => n.startsWith("type "))) continue; // { type A, type B }
    }
    out.push(m[4]!);
  }
  for (const m of source.matchAll(/^\s*import\s+["']([^"']+)["']/gm)) out.push(m[1]!); // side-effect imports
  return out;
}

const ALLOWED_PACKAGES = new Set(["@temporalio/workflow"]);
const ALLOWED_DIRS = ["workflows", "core"].map((d) => path.join(ROOT, d) + path.sep);

/** Every violation reachable from the workflow files: [chain, what is wrong]. */
async function violations(): Promise<string[]> {
  const found: string[] = [];
  const seen = new Set<string>();
  const visit = async (file: string, chain: string[]): Promise<void> => {
    if (seen.has(file)) return;
    seen.add(file);
    const src = await fs.readFile(file, "utf8");
    const here = [...chain, path.relative(ROOT, file)];
    if (/\bDeno\.\w/.test(src.replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, ""))) {
      found.push(`${here.join(" -> ")}: uses Deno.*`);
    }
    for (const spec of runtimeImports(src)) {
      if (!spec.startsWith(".")) {
        if (!ALLOWED_PACKAGES.has(spec)) found.push(`${here.join(" -> ")}: imports ${spec}`);
        continue;
      }
      const target = path.resolve(path.dirname(file), spec);
      if (!ALLOWED_DIRS.some((d) => target.startsWith(d))) {
        found.push(`${here.join(" -> ")}: imports ${path.relative(ROOT, target)} at run time`);
        continue;
      }
      await visit(target, here);
    }
  };
  for (const f of await fs.readdir(path.join(ROOT, "workflows"))) {
    if (f.endsWith(".ts")) await visit(path.join(ROOT, "workflows", f), []);
  }
  return found;
}

Deno.test("workflow code imports only @temporalio/workflow and pure workflows/ and core/ modules", async () => {
  assert.deepEqual(await violations(), []);
});

Deno.test("the sandbox guard sees through type-only imports and catches a runtime one", () => {
  assert.deepEqual(runtimeImports(`import type { A } from "../activities/mod.ts";`), []);
  assert.deepEqual(runtimeImports(`import { type A, type B } from "x";`), []);
  assert.deepEqual(runtimeImports(`import { type A, b } from "x";`), ["x"]);
  assert.deepEqual(runtimeImports(`import {\n  proxyActivities,\n  sleep,\n} from "@temporalio/workflow";`), [
    "@temporalio/workflow",
  ]);
  assert.deepEqual(runtimeImports(`export { a } from "./b.ts";\nimport "./side.ts";`), [
    "./b.ts",
    "./side.ts",
  ]);
});
