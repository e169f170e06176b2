/**
 * Filesystem {@linkcode ArtifactStore} under one root directory (default `.cm2/store`).
 * Writes go to `tmp/` and are renamed into place after fsync, so a crash never leaves a torn blob.
 *
 * @module
 */
import { createHash, randomUUID } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { type ArtifactStore, assertSafeName, parseRef, type Ref, StoreError } from "./mod.ts";

function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.stat(p);
    return true;
  } catch {
    return false;
  }
}

/** An {@linkcode ArtifactStore} on the local filesystem. */
export class FsStore implements ArtifactStore {
  readonly root: string;
  /** Directories known to exist (saves two mkdir calls per write). */
  #dirs = new Set<string>();

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** `file://` URL of the root. */
  get url(): string {
    return pathToFileURL(this.root).href;
  }

  #objectPath(ref: Ref): string {
    const { sha256 } = parseRef(ref);
    return path.join(this.root, "objects", "sha256", sha256.slice(0, 2), sha256);
  }

  #namePath(name: string): string {
    assertSafeName(name);
    return path.join(this.root, "names", `${name}.json`);
  }

  async #mkdir(dir: string): Promise<void> {
    if (this.#dirs.has(dir)) return;
    await fs.mkdir(dir, { recursive: true });
    this.#dirs.add(dir);
  }

  /**
   * Writes to `tmp/` and renames into place, so readers never see a torn file. Pointers are
   * fsynced (they are commit points); blobs are not, because a blob is verified against its hash
   * on every read and rewritten by `put` when its size is wrong.
   */
  async #writeAtomic(target: string, data: Uint8Array, durable: boolean): Promise<void> {
    const tmpDir = path.join(this.root, "tmp");
    await this.#mkdir(tmpDir);
    await this.#mkdir(path.dirname(target));
    const tmp = path.join(tmpDir, randomUUID());
    try {
      const fh = await fs.open(tmp, "w");
      try {
        await fh.writeFile(data);
        if (durable) await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, target);
    } catch (err) {
      await fs.unlink(tmp).catch(() => {}); // never leave a temp file behind a failed write
      throw err;
    }
  }

  async put(data: Uint8Array): Promise<Ref> {
    const sha256 = sha256Hex(data);
    const ref: Ref = { uri: `cm2://sha256/${sha256}`, sha256, bytes: data.byteLength };
    const target = this.#objectPath(ref);
    const size = await fs.stat(target).then((st) => st.size, () => -1);
    if (size !== data.byteLength) await this.#writeAtomic(target, data, false);
    return ref;
  }

  async get(ref: Ref): Promise<Uint8Array> {
    const target = this.#objectPath(ref);
    let data: Uint8Array;
    try {
      data = new Uint8Array(await fs.readFile(target));
    } catch {
      throw new StoreError(`Blob ${ref.uri} is missing from the store at ${this.root}`);
    }
    if (data.byteLength !== ref.bytes || sha256Hex(data) !== ref.sha256) {
      throw new StoreError(
        `Blob ${ref.uri} is corrupt: read ${data.byteLength} bytes with another hash, expected ${ref.bytes}`,
      );
    }
    return data;
  }

  has(ref: Ref): Promise<boolean> {
    return exists(this.#objectPath(ref));
  }

  async setName(name: string, ref: Ref): Promise<void> {
    parseRef(ref);
    await this.#writeAtomic(this.#namePath(name), new TextEncoder().encode(JSON.stringify(ref)), true);
  }

  async setNameIfAbsent(name: string, ref: Ref): Promise<Ref> {
    parseRef(ref);
    const target = this.#namePath(name);
    const current = await this.getName(name);
    if (current) return current;
    // Create-if-absent without a race: hard-link a fully written temp file into place.
    const tmpDir = path.join(this.root, "tmp");
    await this.#mkdir(tmpDir);
    await this.#mkdir(path.dirname(target));
    const tmp = path.join(tmpDir, randomUUID());
    const fh = await fs.open(tmp, "w");
    try {
      await fh.writeFile(JSON.stringify(ref));
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await fs.link(tmp, target);
      return ref;
    } catch (err) {
      if ((err as { code?: string }).code !== "EEXIST") throw err;
      return (await this.getName(name))!;
    } finally {
      await fs.unlink(tmp).catch(() => {});
    }
  }

  async getName(name: string): Promise<Ref | undefined> {
    const p = this.#namePath(name);
    let text: string;
    try {
      text = await fs.readFile(p, "utf8");
    } catch {
      return undefined;
    }
    return parseRef(JSON.parse(text));
  }

  async listNames(prefix: string): Promise<string[]> {
    const base = path.join(this.root, "names");
    const out: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries;
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(path.join(dir, e.name), r);
        else if (e.name.endsWith(".json")) out.push(r.slice(0, -5));
      }
    };
    // Only the folder the prefix names is walked (a run's metrics are not found by walking every cached verdict).
    const dir = prefix.includes("/") ? prefix.slice(0, prefix.lastIndexOf("/")) : "";
    await walk(dir ? path.join(base, ...dir.split("/")) : base, dir);
    return out.filter((n) => n.startsWith(prefix)).sort();
  }

  locate(ref: Ref): string {
    return this.#objectPath(ref);
  }

  async *listBlobs(): AsyncIterable<Ref> {
    const base = path.join(this.root, "objects", "sha256");
    for (const dir of await fs.readdir(base).catch(() => [] as string[])) {
      for (const e of await fs.readdir(path.join(base, dir), { withFileTypes: true }).catch(() => [])) {
        if (!e.isFile() || !/^[0-9a-f]{64}$/.test(e.name)) continue;
        const { size } = await fs.stat(path.join(base, dir, e.name));
        yield { uri: `cm2://sha256/${e.name}`, sha256: e.name, bytes: size };
      }
    }
  }

  async deleteBlob(ref: Ref): Promise<void> {
    await fs.rm(this.#objectPath(ref), { force: true });
  }
}
