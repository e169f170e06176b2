/**
 * Model clients: one {@linkcode ChatModel} per role over any OpenAI-compatible endpoint, structured
 * output validated with zod, and per-role usage accounting.
 *
 * @module
 */
export * from "./client.ts";
export * from "./structured.ts";
export * from "./usage.ts";
