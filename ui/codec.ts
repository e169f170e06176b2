/**
 * A Temporal codec endpoint for display: the Web UI posts the payloads of a history to `/decode` and shows what
 * comes back. cm2's payloads are small JSON values whose content lives in the store as refs
 * (`{uri: "cm2://sha256/…", sha256, bytes}`), so the timeline shows *that* a policy step happened but not what was
 * said. This codec keeps each payload as it is and adds, beside every ref it holds, a short summary of the blob's
 * content: for an episode state the messages the step appended and where the episode stands, for other JSON a
 * truncated copy. Secrets never leave: summaries pass through the key redaction of `core/redact.ts`.
 *
 * Display only: workers and histories are unchanged (`/encode` gives its payloads back as they came), and a payload
 * that is not cm2's JSON, or a blob that cannot be read, is shown as it is with the reason beside it.
 *
 * @module
 */
import { redactKeyLike } from "../core/redact.ts";
import { Buffer } from "node:buffer";
import { type ArtifactStore, parseRef, type Ref } from "../store/mod.ts";

/** A payload as the codec protocol carries it (proto3 JSON: every bytes field is base64). */
export interface WirePayload {
  metadata?: Record<string, string>;
  data?: string;
}

/** Limits of one decode: summaries stay small enough for a timeline. */
export interface CodecLimits {
  /** Longest string kept in a summary (longer ones end in `… (N chars)`). */
  maxString: number;
  /** Most refs resolved in one payload (the rest are listed without content). */
  maxRefs: number;
  /** Largest blob read, in bytes. */
  maxBlobBytes: number;
  /** Messages shown of an episode snapshot (the last ones). */
  lastMessages: number;
}

/** Defaults of {@linkcode CodecLimits}. */
export const CODEC_LIMITS: CodecLimits = {
  maxString: 600,
  maxRefs: 12,
  maxBlobBytes: 8 << 20,
  lastMessages: 3,
};

const decoder = new TextDecoder();

/** The value as a store ref (`parseRef`: the uri agreeing with its hash), or null. */
function asRef(value: unknown): Ref | null {
  try {
    return parseRef(value);
  } catch {
    return null;
  }
}

function clip(text: string, limits: CodecLimits): string {
  const clean = redactKeyLike(text);
  return clean.length <= limits.maxString
    ? clean
    : `${clean.slice(0, limits.maxString)}… (${clean.length} chars)`;
}

/** A copy of a JSON value with long strings clipped, at most 200 entries a level and 6 levels deep. */
function clipped(value: unknown, limits: CodecLimits, depth = 0): unknown {
  if (typeof value === "string") return clip(value, limits);
  if (value === null || typeof value !== "object") return value;
  if (depth >= 6) return Array.isArray(value) ? `[${value.length} items]` : "{…}";
  if (Array.isArray(value)) {
    const head = value.slice(0, 200).map((v) => clipped(v, limits, depth + 1));
    return value.length > 200 ? [...head, `… ${value.length - 200} more`] : head;
  }
  const entries = Object.entries(value as Record<string, unknown>);
  const out: Record<string, unknown> = {};
  for (const [k, v] of entries.slice(0, 200)) out[k] = clipped(v, limits, depth + 1);
  if (entries.length > 200) out["…"] = `${entries.length - 200} more keys`;
  return out;
}

interface Message {
  role?: string;
  content?: string;
  tool_calls?: { function?: { name?: string; arguments?: string } }[];
}

/** One line per message: `role: text` with its tool calls as `name(args)`. */
function messageLines(messages: Message[], limits: CodecLimits): string[] {
  return messages.map((m) => {
    const calls = (m.tool_calls ?? []).map((c) =>
      `${c.function?.name ?? "?"}(${c.function?.arguments ?? ""})`
    );
    const text = [m.content ?? "", ...calls].filter((s) => s !== "").join(" ");
    return clip(`${m.role ?? "?"}: ${text}`, limits);
  });
}

interface TurnLike {
  userIndex?: number;
  sat?: (boolean | null)[][][];
  by?: string[][];
  judged?: boolean;
}

/**
 * Per turn and variant: the verdicts of the last judged step, `1`/`0`/`.` an item. A turn is named by its place
 * in a snapshot, or by its user message's index in a delta (which holds the turns from its base's turn on).
 */
function verdictLines(turns: TurnLike[], name: (t: TurnLike, i: number) => string): string[] {
  const lines: string[] = [];
  turns.forEach((t, i) => {
    (t.sat ?? []).forEach((steps, v) => {
      const last = steps.at(-1);
      if (!last) return;
      const cells = last.map((x) => (x === true ? "1" : x === false ? "0" : ".")).join("");
      const by = t.by?.[v]?.at(-1);
      lines.push(`${name(t, i)} variant ${v}: ${cells}${by ? ` (by ${by})` : ""}`);
    });
  });
  return lines;
}

/** What a blob says, in a few lines: episode states and deltas by their schema, other JSON clipped. */
export function summarizeBlob(value: unknown, limits: CodecLimits = CODEC_LIMITS): unknown {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return clipped(value, limits);
  const v = value as Record<string, unknown>;
  if (v.schema === "cm2.episode/v2-delta") {
    const set = (v.set ?? {}) as Record<string, unknown>;
    const turns = (v.turns ?? []) as TurnLike[];
    return {
      kind: "episode step",
      appended: messageLines((v.messages ?? []) as Message[], limits),
      ...(set.phase !== undefined ? { phase: set.phase } : {}),
      ...(set.end ? { end: clipped(set.end, limits) } : {}),
      verdicts: verdictLines(turns, (t) => `turn at message ${t.userIndex ?? "?"}`),
    };
  }
  if (v.schema === "cm2.episode/v2") {
    const messages = (v.messages ?? []) as Message[];
    return {
      kind: "episode state",
      owner: v.owner,
      phase: v.phase,
      turn: v.turn,
      messages: messages.length,
      last: messageLines(messages.slice(-limits.lastMessages), limits),
      ...(v.end ? { end: clipped(v.end, limits) } : {}),
      verdicts: verdictLines((v.turns ?? []) as TurnLike[], (_t, i) => `turn ${i}`),
    };
  }
  return clipped(value, limits);
}

async function readSummary(store: ArtifactStore, ref: Ref, limits: CodecLimits): Promise<unknown> {
  if (ref.bytes > limits.maxBlobBytes) return `(${ref.bytes} bytes: too large to show)`;
  let bytes: Uint8Array;
  try {
    bytes = await store.get(ref);
  } catch (err) {
    return `(not readable: ${clip(err instanceof Error ? err.message : String(err), limits)})`;
  }
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch {
    return `(${ref.bytes} bytes, not JSON)`;
  }
  return summarizeBlob(value, limits);
}

/**
 * The value with a summary beside each ref it holds: a ref `{uri, sha256, bytes}` becomes
 * `{uri, sha256, bytes, content}`. At most `limits.maxRefs` refs are read; later ones get no `content`.
 */
export async function withContent(
  store: ArtifactStore,
  value: unknown,
  limits: CodecLimits = CODEC_LIMITS,
): Promise<unknown> {
  let budget = limits.maxRefs;
  const walk = async (v: unknown, depth: number): Promise<unknown> => {
    const ref = asRef(v);
    if (ref) {
      if (budget <= 0) return v;
      budget--;
      return { ...(v as object), content: await readSummary(store, ref, limits) };
    }
    if (v === null || typeof v !== "object" || depth > 12) return v;
    if (Array.isArray(v)) {
      const out: unknown[] = [];
      for (const x of v) out.push(await walk(x, depth + 1));
      return out;
    }
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[k] = await walk(x, depth + 1);
    return out;
  };
  return await walk(value, 0);
}

/**
 * Decodes one payload for display. A `json/plain` payload comes back as `json/plain` with its refs' content
 * added; any other payload (binary, null, protobuf) comes back unchanged.
 */
export async function decodePayload(
  store: ArtifactStore,
  payload: WirePayload,
  limits: CodecLimits = CODEC_LIMITS,
): Promise<WirePayload> {
  const encoding = payload.metadata?.encoding;
  if (encoding === undefined || payload.data === undefined) return payload;
  let value: unknown;
  try {
    if (Buffer.from(encoding, "base64").toString("utf8") !== "json/plain") return payload;
    value = JSON.parse(Buffer.from(payload.data, "base64").toString("utf8"));
  } catch {
    return payload;
  }
  const shown = await withContent(store, value, limits);
  return { ...payload, data: Buffer.from(JSON.stringify(shown), "utf8").toString("base64") };
}

/** The Web UI origins allowed to call the codec (the dev server's UI, by either loopback name). */
export function uiOrigins(uiPort: number): string[] {
  return [`http://localhost:${uiPort}`, `http://127.0.0.1:${uiPort}`];
}

/**
 * The codec endpoint's HTTP handler: `POST /decode` and `POST /encode` (also under `/<namespace>/`, as the CLI's
 * `--codec-endpoint` templating sends them), CORS for the given origins. `path` is the request's path below the
 * codec's mount point (default: the whole path). Returns null for any other path, so a server can route the rest
 * elsewhere.
 */
export function codecHandler(
  store: ArtifactStore,
  origins: readonly string[],
  limits: CodecLimits = CODEC_LIMITS,
): (req: Request, path?: string) => Promise<Response | null> {
  return async (req, path = new URL(req.url).pathname) => {
    const match = /^(?:\/[^/]+)?\/(decode|encode)$/.exec(path);
    if (!match) return null;
    const origin = req.headers.get("origin");
    const cors: Record<string, string> = origin !== null && origins.includes(origin)
      ? {
        "access-control-allow-origin": origin,
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "POST, OPTIONS",
        "access-control-allow-headers": "content-type, x-namespace, authorization, caller-type",
        "vary": "origin",
      }
      : {};
    if (req.method === "OPTIONS") return new Response(null, { status: 204, headers: cors });
    if (req.method !== "POST") {
      return new Response("method not allowed: POST only", {
        status: 405,
        headers: { ...cors, allow: "POST" },
      });
    }
    let body: { payloads?: unknown };
    try {
      body = await req.json();
    } catch (err) {
      return new Response(`invalid JSON body: ${err instanceof Error ? err.message : err}`, {
        status: 400,
        headers: cors,
      });
    }
    if (!Array.isArray(body.payloads)) {
      return new Response('the body must be {"payloads": [...]}', { status: 400, headers: cors });
    }
    const payloads = body.payloads as WirePayload[];
    const out = match[1] === "encode"
      ? payloads
      : await Promise.all(payloads.map((p) => decodePayload(store, p, limits)));
    return Response.json({ payloads: out }, { headers: cors });
  };
}
