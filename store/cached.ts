/**
 * A worker's caches over the artifact store, in one place: JSON blobs it read or wrote lately (by sha256,
 * least recently used out first), parsed immutable values (run configs), and first-writer-wins names it has
 * seen settled. Blobs are content-addressed and settled names never change, so no entry is ever stale: the
 * caches only save store round trips. The next activity of an episode usually runs on the worker that wrote
 * its state, and the judge calls of a round all read the same plan.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ArtifactStore, Ref } from "./mod.ts";

/** Text of recently used blobs, by sha256, up to `maxChars` (least recently used out first). */
export class BlobCache {
  #entries = new Map<string, { ref: Ref; text: string }>();
  #chars = 0;

  constructor(readonly maxChars: number) {}

  get(sha256: string): { ref: Ref; text: string } | undefined {
    const e = this.#entries.get(sha256);
    if (e) {
      this.#entries.delete(sha256);
      this.#entries.set(sha256, e);
    }
    return e;
  }

  set(ref: Ref, text: string): void {
    if (text.length > this.maxChars / 8 || this.#entries.has(ref.sha256)) return;
    this.#entries.set(ref.sha256, { ref, text });
    this.#chars += text.length;
    for (const [k, v] of this.#entries) {
      if (this.#chars <= this.maxChars) break;
      this.#entries.delete(k);
      this.#chars -= v.text.length;
    }
  }
}

/** Sizes of the caches. */
export interface CacheLimits {
  /** Text of cached JSON blobs (episode states, plans, verdicts). */
  blobChars: number;
  /** Settled first-writer-wins names remembered (simulated results, judge verdicts). */
  nameEntries: number;
}

const DEFAULT_LIMITS: CacheLimits = { blobChars: 32 * 2 ** 20, nameEntries: 100_000 };
const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** The store as a long-lived worker uses it: the same operations, with its caches in front. */
export class CachedStore {
  readonly blobs: BlobCache;
  #settled = new Map<string, string>();
  #memo = new Map<string, unknown>();

  constructor(readonly store: ArtifactStore, readonly limits: CacheLimits = DEFAULT_LIMITS) {
    this.blobs = new BlobCache(limits.blobChars);
  }

  /** A blob's text, from the cache when this worker saw it lately. */
  async readText(ref: Ref): Promise<string> {
    let text = this.blobs.get(ref.sha256)?.text;
    if (text === undefined) {
      text = decoder.decode(await this.store.get(ref));
      this.blobs.set(ref, text);
    }
    return text;
  }

  /** A JSON blob, parsed anew (callers may change it). */
  async readJson<T>(ref: Ref): Promise<T> {
    return JSON.parse(await this.readText(ref)) as T;
  }

  /** A JSON blob parsed once and shared (for immutable values such as run configs: never change it). */
  async memo<T>(ref: Ref): Promise<T> {
    if (!this.#memo.has(ref.sha256)) this.#memo.set(ref.sha256, await this.readJson<T>(ref));
    return this.#memo.get(ref.sha256) as T;
  }

  /** Writes a JSON blob (the bytes of `putJson`); one this worker wrote or read lately is not written again. */
  async writeJson(value: unknown): Promise<Ref> {
    const text = JSON.stringify(value);
    const hit = this.blobs.get(createHash("sha256").update(text).digest("hex"));
    if (hit) return hit.ref;
    const ref = await this.store.put(encoder.encode(text));
    this.blobs.set(ref, text);
    return ref;
  }

  /** The JSON a name points at, with its ref, or undefined while the name is unset. */
  async readName<T>(name: string): Promise<{ ref: Ref; value: T } | undefined> {
    const ref = await this.store.getName(name);
    return ref === undefined ? undefined : { ref, value: await this.readJson<T>(ref) };
  }

  /**
   * Writes `value` and points `name` at it unless another writer was first (first writer wins); returns the
   * winner either way, and whether it is this write.
   */
  async writeNameOnce<T>(name: string, value: T): Promise<{ ref: Ref; value: T; mine: boolean }> {
    const mine = await this.writeJson(value);
    const winner = await this.store.setNameIfAbsent(name, mine);
    if (winner.sha256 === mine.sha256) return { ref: mine, value, mine: true };
    return { ref: winner, value: await this.readJson<T>(winner), mine: false };
  }

  /** Whether this worker has seen `name` settled. */
  isSettled(name: string): boolean {
    return this.#settled.has(name);
  }

  /** The text a first-writer-wins name points at, or undefined while it is unset. */
  async settledText(name: string): Promise<string | undefined> {
    const known = this.#settled.get(name);
    if (known !== undefined) return known;
    const ref = await this.store.getName(name);
    if (!ref) return undefined;
    const text = decoder.decode(await this.store.get(ref));
    this.#remember(name, text);
    return text;
  }

  /** Points `name` at `mine` unless another writer was first; returns the winner and its text. */
  async settle(name: string, mine: Ref): Promise<{ winner: Ref; text: string }> {
    const winner = await this.store.setNameIfAbsent(name, mine);
    const text = this.blobs.get(winner.sha256)?.text ?? decoder.decode(await this.store.get(winner));
    this.#remember(name, text);
    return { winner, text };
  }

  #remember(name: string, text: string): void {
    this.#settled.set(name, text);
    if (this.#settled.size > this.limits.nameEntries) {
      this.#settled.delete(this.#settled.keys().next().value!);
    }
  }
}
