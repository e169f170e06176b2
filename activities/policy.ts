/**
 * Policy publishing: making a new adapter live on the policy server before the next rollouts, and proving
 * that it is (the served version, or the listed adapter name). Three adapter APIs: cm2's own policy server
 * (the checkpoint ref and the store URL go over, the server fetches and verifies it), vLLM and SGLang (the adapter files are
 * written to a directory the server reads).
 *
 * @module
 */
import { ApplicationFailure } from "@temporalio/activity";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { RunConfig } from "../core/config.ts";
import type { CachedStore } from "../store/cached.ts";
import { FsStore } from "../store/fs_store.ts";
import { type ArtifactStore, getJson, type Ref } from "../store/mod.ts";

/** The model name rollouts ask for at a policy version (vLLM/SGLang serve adapters by name). */
export function policyModelName(config: RunConfig, version: number): string {
  const api = config.models.policy.adapterApi;
  // with `trainer.init` even version 0 is an adapter (the SFT one)
  return (version > 0 || config.trainer.init !== undefined) && (api === "vllm" || api === "sglang")
    ? `${config.name}-v${version}`
    : config.models.policy.model;
}

/**
 * The local directory vLLM/SGLang read adapters from: `<root>/adapters` of a file store, else
 * `<project>/.cm2/adapters` (the policy server must see the same directory).
 */
export function adapterDirOf(store: ArtifactStore, projectRoot: string): string {
  return store instanceof FsStore
    ? path.join(store.root, "adapters")
    : path.join(projectRoot, ".cm2", "adapters");
}

/** Writes a checkpoint's adapter files to `<adapterDir>/<run>/v<n>/` (idempotent) and returns the directory. */
export async function materializeAdapter(
  store: ArtifactStore,
  adapterDir: string,
  config: RunConfig,
  checkpoint: Ref,
  version: number,
): Promise<string> {
  const manifest = await getJson<{ files: Record<string, Ref> }>(store, checkpoint);
  const dir = path.join(adapterDir, config.name, `v${version}`);
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const done = await fs.stat(path.join(dir, ".complete")).then(() => true, () => false);
  if (done) return dir;
  await fs.mkdir(tmp, { recursive: true });
  for (const [name, ref] of Object.entries(manifest.files)) {
    if (name.includes("/") || name.startsWith(".")) {
      throw ApplicationFailure.nonRetryable(`Bad adapter file name ${name}`, "InvalidInput");
    }
    await fs.writeFile(path.join(tmp, name), await store.get(ref));
  }
  await fs.writeFile(path.join(tmp, ".complete"), checkpoint.uri);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.rename(tmp, dir);
  return dir;
}

/** Builds the policy activities over the worker's store and caches. */
export function createPolicyActivities(deps: { store: ArtifactStore; cached: CachedStore; root: string }) {
  const { store, cached } = deps;
  const adapterDir = adapterDirOf(store, deps.root);
  const cfg = (ref: Ref) => cached.memo<RunConfig>(ref);
  return {
    /**
     * Resolves `trainer.init` (a store name such as `sft/<run>/final`) to its SFT checkpoint manifest and checks
     * that an RL run can start from it: a LoRA SFT of the same base with the same LoRA shape. Every mismatch is
     * a non-retryable error naming both values.
     */
    async resolveInit(input: { configRef: Ref }): Promise<{ init: Ref }> {
      const config = await cfg(input.configRef);
      const name = config.trainer.init!;
      const bad = (message: string) =>
        ApplicationFailure.nonRetryable(`trainer.init ${name}: ${message}`, "InvalidInput");
      const ref = await store.getName(name);
      if (!ref) throw bad(`no such name in the store ${store.url} (run \`cm2 sft\` first)`);
      const m = await getJson<Record<string, unknown>>(store, ref);
      if (m.schema !== "cm2.sft-checkpoint/v1") {
        throw bad(`is a ${String(m.schema)}, expected cm2.sft-checkpoint/v1`);
      }
      if (m.finetune !== "lora") {
        throw bad("is a full fine-tune; use its weights as trainer.base (kind hf, a directory) instead");
      }
      const base = JSON.stringify(m.base);
      if (base !== JSON.stringify(config.trainer.base)) {
        throw bad(`was trained on base ${base}, trainer.base is ${JSON.stringify(config.trainer.base)}`);
      }
      const sft = (m.sft ?? {}) as { loraRank?: number; loraAlpha?: number };
      if (sft.loraRank !== config.trainer.loraRank || sft.loraAlpha !== config.trainer.loraAlpha) {
        throw bad(
          `has LoRA rank ${sft.loraRank} alpha ${sft.loraAlpha}; trainer.loraRank/loraAlpha are ` +
            `${config.trainer.loraRank}/${config.trainer.loraAlpha}`,
        );
      }
      return { init: ref };
    },

    /**
     * Makes a checkpoint live on the policy server and verifies it before the next rollouts (see
     * `adapterApi` in core/config.ts). Returns the version and the model name rollouts must ask for.
     */
    async publishPolicy(
      input: { configRef: Ref; checkpoint: Ref; version: number },
    ): Promise<{ version: number; model: string }> {
      const config = await cfg(input.configRef);
      const policy = config.models.policy;
      if (policy.adapterApi === "none") return { version: input.version, model: policy.model };
      const base = policy.baseURL.replace(/\/$/, "");
      const loraName = policyModelName(config, input.version);
      let url: string;
      let body: Record<string, unknown>;
      if (policy.adapterApi === "cm2") {
        url = `${base}/load_lora_adapter`;
        body = {
          lora_name: loraName,
          checkpoint: input.checkpoint,
          store_url: store.url,
          version: input.version,
        };
      } else {
        const dir = await materializeAdapter(store, adapterDir, config, input.checkpoint, input.version);
        url = policy.adapterApi === "vllm"
          ? `${base}/load_lora_adapter`
          : `${base.replace(/\/v1$/, "")}/load_lora_adapter`;
        body = { lora_name: loraName, lora_path: dir };
      }
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(120_000),
      });
      const text = await res.text();
      // vLLM answers 400 when the name is already loaded: a retry after a crash, which is fine.
      const already = res.status === 400 && /already/i.test(text);
      if (!res.ok && !already) {
        const type = res.status >= 500 || res.status === 429 ? "ServerError" : "BadRequest";
        throw ApplicationFailure.create({
          type,
          message: `Policy server refused adapter v${input.version}: HTTP ${res.status} ${
            text.slice(0, 300)
          }`,
          nonRetryable: type === "BadRequest",
        });
      }
      if (policy.adapterApi === "cm2") {
        const check = await fetch(`${base}/policy_version`, { signal: AbortSignal.timeout(30_000) });
        const served = await check.json() as { version?: number | string };
        if (Number(served.version) !== input.version) {
          throw ApplicationFailure.create({
            type: "ServerError",
            message: `Policy server serves version ${served.version} after loading ${input.version}`,
          });
        }
        return { version: input.version, model: policy.model };
      }
      const models = await fetch(`${base}/models`, { signal: AbortSignal.timeout(30_000) });
      const listed = await models.json() as { data?: { id?: string }[] };
      if (!(listed.data ?? []).some((m) => m.id === loraName)) {
        throw ApplicationFailure.create({
          type: "ServerError",
          message: `Policy server does not list adapter ${loraName} after loading it`,
        });
      }
      return { version: input.version, model: loraName };
    },
  };
}
