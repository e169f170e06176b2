/**
 * S3-compatible {@linkcode ArtifactStore} (AWS S3, MinIO, Cloudflare R2, moto, …) over `@aws-sdk/client-s3`,
 * with the file store's layout below a key prefix: `<prefix>/objects/sha256/<h[0:2]>/<h>` for blobs and
 * `<prefix>/names/<name>.json` for pointers (compact JSON refs, byte-identical to `FsStore`'s and the
 * Python trainer's).
 *
 * - **Content addressing**: a blob's key is its SHA-256; `put` is a conditional PutObject
 *   (`If-None-Match: *`), so a blob is written once and a second writer of the same bytes gets 412, which
 *   is success.
 * - **Verified reads**: `get` checks size and hash and throws {@linkcode StoreError} on a mismatch.
 * - **First-writer-wins pointers**: `setNameIfAbsent` is a conditional PutObject; on 412 the existing
 *   pointer is read and returned, on 409 (a concurrent conditional write in flight) it retries. AWS S3
 *   (since 2024), MinIO and moto honour `If-None-Match`. A server that ignores the header settles a race
 *   by last writer wins: every racer is told it won and the stored pointer is the last one written. cm2's
 *   first-writer-wins names (simulator and judge caches, label attempts) then may disagree between the
 *   racers, which costs consistency inside a group, never durability; use a server with conditional writes.
 *
 * Credentials come from the environment only (the SDK's default chain: `AWS_ACCESS_KEY_ID`,
 * `AWS_SECRET_ACCESS_KEY`, profiles, instance roles); the endpoint from the URL's `endpoint` query or
 * `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; the region from `region` or `AWS_REGION` (default us-east-1).
 *
 * @module
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from "@aws-sdk/client-s3";
import { createHash } from "node:crypto";
import { type ArtifactStore, assertSafeName, parseRef, type Ref, StoreError } from "./mod.ts";

/** Where an S3 store lives: bucket, key prefix (no leading or trailing slash), optional endpoint and region. */
export interface S3Location {
  bucket: string;
  prefix: string;
  endpoint?: string;
  region?: string;
}

const encoder = new TextEncoder();

function status(err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
}

function notFound(err: unknown): boolean {
  return status(err) === 404 || (err as { name?: string }).name === "NoSuchKey" ||
    (err as { name?: string }).name === "NotFound";
}

/** The canonical URL of an S3 location: `s3://bucket[/prefix][?endpoint=…&region=…]`. */
export function s3Url(loc: S3Location): string {
  const query = new URLSearchParams();
  if (loc.endpoint) query.set("endpoint", loc.endpoint);
  if (loc.region) query.set("region", loc.region);
  const q = query.size > 0 ? `?${query}` : "";
  return `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ""}${q}`;
}

/** An {@linkcode ArtifactStore} in an S3 bucket. */
export class S3Store implements ArtifactStore {
  readonly url: string;
  readonly #loc: S3Location;
  readonly #s3: S3Client;

  constructor(loc: S3Location) {
    this.#loc = loc;
    const endpoint = loc.endpoint ?? Deno.env.get("AWS_ENDPOINT_URL_S3") ?? Deno.env.get("AWS_ENDPOINT_URL");
    this.#s3 = new S3Client({
      region: loc.region ?? Deno.env.get("AWS_REGION") ?? "us-east-1",
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
    });
    this.url = s3Url(loc);
  }

  #key(rest: string): string {
    return this.#loc.prefix ? `${this.#loc.prefix}/${rest}` : rest;
  }

  #objectKey(ref: Ref): string {
    const { sha256 } = parseRef(ref);
    return this.#key(`objects/sha256/${sha256.slice(0, 2)}/${sha256}`);
  }

  #nameKey(name: string): string {
    assertSafeName(name);
    return this.#key(`names/${name}.json`);
  }

  async #read(key: string): Promise<Uint8Array | undefined> {
    try {
      const out = await this.#s3.send(new GetObjectCommand({ Bucket: this.#loc.bucket, Key: key }));
      return await out.Body!.transformToByteArray();
    } catch (err) {
      if (notFound(err)) return undefined;
      throw err;
    }
  }

  /** Conditional create; false when the key already exists. */
  async #create(key: string, body: Uint8Array): Promise<boolean> {
    for (let attempt = 0;; attempt++) {
      try {
        await this.#s3.send(
          new PutObjectCommand({ Bucket: this.#loc.bucket, Key: key, Body: body, IfNoneMatch: "*" }),
        );
        return true;
      } catch (err) {
        if (status(err) === 412) return false;
        if (status(err) === 409 && attempt < 5) {
          await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
          continue;
        }
        throw err;
      }
    }
  }

  async put(data: Uint8Array): Promise<Ref> {
    const sha256 = createHash("sha256").update(data).digest("hex");
    const ref: Ref = { uri: `cm2://sha256/${sha256}`, sha256, bytes: data.byteLength };
    await this.#create(this.#objectKey(ref), data);
    return ref;
  }

  async get(ref: Ref): Promise<Uint8Array> {
    const data = await this.#read(this.#objectKey(ref));
    if (!data) throw new StoreError(`Blob ${ref.uri} is missing from the store at ${this.url}`);
    if (data.byteLength !== ref.bytes || createHash("sha256").update(data).digest("hex") !== ref.sha256) {
      throw new StoreError(
        `Blob ${ref.uri} is corrupt: read ${data.byteLength} bytes with another hash, expected ${ref.bytes}`,
      );
    }
    return data;
  }

  async has(ref: Ref): Promise<boolean> {
    try {
      await this.#s3.send(new HeadObjectCommand({ Bucket: this.#loc.bucket, Key: this.#objectKey(ref) }));
      return true;
    } catch (err) {
      if (notFound(err)) return false;
      throw err;
    }
  }

  async setName(name: string, ref: Ref): Promise<void> {
    const body = encoder.encode(JSON.stringify(parseRef(ref)));
    await this.#s3.send(
      new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#nameKey(name), Body: body }),
    );
  }

  async setNameIfAbsent(name: string, ref: Ref): Promise<Ref> {
    const body = encoder.encode(JSON.stringify(parseRef(ref)));
    if (await this.#create(this.#nameKey(name), body)) return ref;
    return (await this.getName(name))!;
  }

  async getName(name: string): Promise<Ref | undefined> {
    const data = await this.#read(this.#nameKey(name));
    return data ? parseRef(JSON.parse(new TextDecoder().decode(data))) : undefined;
  }

  async listNames(prefix: string): Promise<string[]> {
    const base = this.#key("names/");
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.#s3.send(
        new ListObjectsV2Command({
          Bucket: this.#loc.bucket,
          Prefix: base + prefix,
          ...(token ? { ContinuationToken: token } : {}),
        }),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key?.endsWith(".json")) out.push(o.Key.slice(base.length, -5));
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  }

  async *listBlobs(): AsyncIterable<Ref> {
    const base = this.#key("objects/sha256/");
    let token: string | undefined;
    do {
      const page = await this.#s3.send(
        new ListObjectsV2Command({
          Bucket: this.#loc.bucket,
          Prefix: base,
          ...(token ? { ContinuationToken: token } : {}),
        }),
      );
      for (const o of page.Contents ?? []) {
        const sha256 = o.Key?.split("/").at(-1) ?? "";
        if (/^[0-9a-f]{64}$/.test(sha256)) {
          yield { uri: `cm2://sha256/${sha256}`, sha256, bytes: o.Size ?? 0 };
        }
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async deleteBlob(ref: Ref): Promise<void> {
    await this.#s3.send(new DeleteObjectCommand({ Bucket: this.#loc.bucket, Key: this.#objectKey(ref) }));
  }

  locate(ref: Ref): string {
    return `s3://${this.#loc.bucket}/${this.#objectKey(ref)}`;
  }
}
