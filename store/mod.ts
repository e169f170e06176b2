/**
 * The artifact store: content-addressed blobs plus named pointers. Workflows pass
 * {@linkcode Ref}s, never the data. Implementations: `FsStore` (a directory) and `S3Store` (a bucket and
 * prefix); `openStore(url)` in `store/open.ts` picks one from the store URL.
 *
 * Layout (shared by both and by the Python trainer, `trainer/cm2_trainer/store.py`):
 * `objects/sha256/<h[0:2]>/<h>` for blobs, `names/<name>.json` for pointers (a compact JSON ref), and for the
 * file store `tmp/` for atomic writes.
 *
 * @module
 */
import { z } from "zod";

import { type Ref, RefSchema } from "../core/ref.ts";

export { type Ref, RefSchema };

/** A blob whose bytes do not match its ref, or a ref that does not resolve. */
export class StoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreError";
  }
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

/** Longest segment of a name (file systems allow 255 bytes per file name; `.json` is appended). */
export const MAX_NAME_SEGMENT = 200;

/**
 * Checks a pointer name: slash-separated segments of letters, digits, `.`, `_`, `-`, no `.` or `..` segment,
 * at most {@linkcode MAX_NAME_SEGMENT} characters a segment and 400 in all. Stores call it before writing.
 */
export function assertSafeName(name: string): void {
  const bad = (why: string) => new StoreError(`Store name ${JSON.stringify(name.slice(0, 120))} ${why}`);
  if (name.length > 400) throw bad(`is ${name.length} characters long, more than 400`);
  if (!NAME_RE.test(name) || name.split("/").some((s) => s === "." || s === "..")) {
    throw bad("is not a safe relative name (segments of letters, digits, '.', '_', '-', separated by '/')");
  }
  const long = name.split("/").find((s) => s.length > MAX_NAME_SEGMENT);
  if (long) throw bad(`has a segment of ${long.length} characters, more than ${MAX_NAME_SEGMENT}`);
}

/** Parses and checks a ref (from a workflow payload or a file); the uri must agree with the hash. */
export function parseRef(value: unknown): Ref {
  const ref = RefSchema.parse(value);
  if (ref.uri !== `cm2://sha256/${ref.sha256}`) {
    throw new StoreError(`Ref uri ${ref.uri} does not match its sha256 ${ref.sha256}`);
  }
  return ref;
}

/** Content-addressed storage with verified reads and atomic named pointers. */
export interface ArtifactStore {
  /** The store's canonical URL (`file:///…` or `s3://…`, see `store/open.ts`); never holds credentials. */
  readonly url: string;
  /** Stores bytes (idempotent: the same bytes give the same ref). */
  put(data: Uint8Array): Promise<Ref>;
  /** Reads and verifies a blob; throws {@linkcode StoreError} when missing or corrupt. */
  get(ref: Ref): Promise<Uint8Array>;
  /** Whether the blob exists (not verified). */
  has(ref: Ref): Promise<boolean>;
  /** Points `name` at `ref`, atomically replacing any previous pointer. */
  setName(name: string, ref: Ref): Promise<void>;
  /** Points `name` at `ref` only if `name` is unset; returns the ref that `name` holds afterwards. */
  setNameIfAbsent(name: string, ref: Ref): Promise<Ref>;
  /** The ref a name points at, or undefined. */
  getName(name: string): Promise<Ref | undefined>;
  /** Names under a prefix (e.g. `runs/demo/`), sorted. */
  listNames(prefix: string): Promise<string[]>;
  /** A human-readable location of a blob (a path or URL), for messages. */
  locate(ref: Ref): string;
  /** Every blob (sha256 and size; `cm2 store gc`), in no particular order. */
  listBlobs(): AsyncIterable<Ref>;
  /** Removes a blob (absent: no error). Only `cm2 store gc` deletes; see `store/gc.ts` for what it may. */
  deleteBlob(ref: Ref): Promise<void>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Stores a value as UTF-8 JSON. */
export function putJson(store: ArtifactStore, value: unknown): Promise<Ref> {
  return store.put(encoder.encode(JSON.stringify(value)));
}

/** Reads a JSON blob and validates it with a zod schema (or returns `unknown` without one). */
export async function getJson<T = unknown>(
  store: ArtifactStore,
  ref: Ref,
  schema?: z.ZodType<T>,
): Promise<T> {
  const text = decoder.decode(await store.get(ref));
  const value: unknown = JSON.parse(text);
  return schema ? schema.parse(value) : value as T;
}
