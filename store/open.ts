/**
 * Opening a store from its URL, the one way a store location is given (config `store.url`, the worker's
 * `--store`, the trainer's wire field `storeUrl`):
 *
 * - `file:///abs/dir`, `file:rel/dir` (relative to `base`, the project root), or a plain path: {@linkcode FsStore};
 * - `s3://bucket[/prefix][?endpoint=http://host:port&region=r]`: {@linkcode S3Store} (credentials from the
 *   environment only).
 *
 * The Python trainer's `open_store` (`trainer/cm2_trainer/store.py`) takes the same URLs.
 *
 * @module
 */
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { FsStore } from "./fs_store.ts";
import type { ArtifactStore } from "./mod.ts";
import { type S3Location, S3Store, s3Url } from "./s3_store.ts";

const FORMS = "file:///abs/dir, file:rel/dir, a plain path, or s3://bucket[/prefix][?endpoint=…&region=…]";

/** A store URL, parsed: a local directory or an S3 location. */
export type StoreLocation = { kind: "file"; root: string } | ({ kind: "s3" } & S3Location);

/** Parses a store URL; relative file paths resolve against `base`. Throws naming the URL and the accepted forms. */
export function parseStoreUrl(url: string, base: string): StoreLocation {
  const shown = url.replace(/\/\/[^@/?]*@/, "//***@");
  const bad = (why: string) => new Error(`Store URL ${JSON.stringify(shown)} ${why}; expected ${FORMS}`);
  if (url.trim() === "") throw bad("is empty");
  if (url.startsWith("s3://")) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw bad("does not parse");
    }
    if (u.username || u.password) throw bad("holds credentials (they come from the environment only)");
    const bucket = u.hostname;
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw bad(`has no valid bucket name`);
    const prefix = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, "");
    const known = new Set(["endpoint", "region"]);
    for (const k of u.searchParams.keys()) if (!known.has(k)) throw bad(`has an unknown parameter ${k}`);
    const endpoint = u.searchParams.get("endpoint") ?? undefined;
    const region = u.searchParams.get("region") ?? undefined;
    return { kind: "s3", bucket, prefix, ...(endpoint ? { endpoint } : {}), ...(region ? { region } : {}) };
  }
  if (url.startsWith("file://")) {
    try {
      return { kind: "file", root: fileURLToPath(url) };
    } catch {
      throw bad("is not an absolute file URL");
    }
  }
  if (url.startsWith("file:")) return { kind: "file", root: path.resolve(base, url.slice(5)) };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) throw bad("has an unsupported scheme");
  return { kind: "file", root: path.resolve(base, url) };
}

/** The canonical URL of a location (absolute `file://` URLs), as stores report it in `url`. */
export function canonicalStoreUrl(url: string, base: string): string {
  const loc = parseStoreUrl(url, base);
  return loc.kind === "file" ? pathToFileURL(loc.root).href : s3Url(loc);
}

/** Opens the store at `url` (see the module doc). */
export function openStore(url: string, base: string): ArtifactStore {
  const loc = parseStoreUrl(url, base);
  return loc.kind === "file" ? new FsStore(loc.root) : new S3Store(loc);
}
