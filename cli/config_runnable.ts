/**
 * What `cm2 config check` looks at beyond the schema: whether the config can run here. Each finding is an
 * error (the run would fail) or a warning (it may be intended). Reads the file system, the environment and the
 * store; never prints a key.
 *
 * @module
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { RunConfig } from "../core/config.ts";
import { datasetRef } from "../store/datasets.ts";
import { openStore, parseStoreUrl } from "../store/open.ts";

/** One finding of {@linkcode runnableFindings}. */
export interface Finding {
  level: "error" | "warning";
  path: string;
  message: string;
}

/** Roles a training run calls; the labeler only serves `cm2 label`. */
const TRAINING_ROLES = new Set(["policy", "judge", "simulator"]);

async function exists(p: string): Promise<boolean> {
  return await fs.stat(p).then(() => true, () => false);
}

/** The nearest existing directory at or above `dir`, and whether this process may write there. */
async function writable(dir: string): Promise<{ at: string; ok: boolean }> {
  let at = dir;
  while (!(await exists(at)) && path.dirname(at) !== at) at = path.dirname(at);
  const probe = path.join(at, `.cm2-write-check-${crypto.randomUUID().slice(0, 8)}`);
  try {
    await fs.writeFile(probe, "");
    await fs.rm(probe);
    return { at, ok: true };
  } catch {
    return { at, ok: false };
  }
}

/** Everything that would stop `config` from running on this machine (or looks unintended). */
export async function runnableFindings(
  config: RunConfig,
  root: string,
  env: (name: string) => string | undefined,
): Promise<Finding[]> {
  const out: Finding[] = [];
  const abs = (p: string) => (path.isAbsolute(p) ? p : path.join(root, p));
  for (const [role, r] of Object.entries(config.models)) {
    if (r.apiKeyEnv !== undefined && !env(r.apiKeyEnv)) {
      out.push({
        level: TRAINING_ROLES.has(role) ? "error" : "warning",
        path: `models.${role}.apiKeyEnv`,
        message: `$${r.apiKeyEnv} is not set${
          TRAINING_ROLES.has(role) ? "" : " (only `cm2 label` uses this role)"
        }`,
      });
    }
  }
  let loc;
  try {
    loc = parseStoreUrl(config.store.url, root);
  } catch (err) {
    out.push({ level: "error", path: "store.url", message: (err as Error).message });
  }
  if (loc?.kind === "file") {
    const rel = path.relative(root, loc.root);
    if (rel.startsWith("..") || path.isAbsolute(rel)) {
      out.push({
        level: "warning",
        path: "store.url",
        message: `the store ${loc.root} is outside the project`,
      });
    }
    const w = await writable(loc.root);
    if (!w.ok) {
      out.push({
        level: "error",
        path: "store.url",
        message: `cannot write the store: ${w.at} is not writable`,
      });
    }
  }
  const ds = config.dataset.path;
  if (ds.startsWith("datasets/")) {
    if (loc) {
      const found = await datasetRef(openStore(config.store.url, root), ds.slice(9)).catch(() => undefined);
      if (!found) {
        out.push({ level: "error", path: "dataset.path", message: `no dataset ${ds} in the store` });
      }
    }
  } else if (!(await exists(abs(ds)))) {
    out.push({ level: "error", path: "dataset.path", message: `no such file: ${abs(ds)}` });
  }
  const base = config.trainer.base;
  if (!(await exists(abs(base.path)))) {
    const hubId = base.kind === "hf" && /^[\w.-]+\/[\w.-]+$/.test(base.path);
    out.push({
      level: hubId ? "warning" : "error",
      path: "trainer.base.path",
      message: hubId
        ? `${base.path} is not a local directory; the trainer will need to download it`
        : `no such ${base.kind === "gguf" ? "file" : "directory"}: ${abs(base.path)}${
          base.path.startsWith(".cm2/") ? " (run `deno task setup`)" : ""
        }`,
    });
  }
  return out;
}
