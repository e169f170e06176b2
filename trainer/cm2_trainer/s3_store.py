"""`S3Store`: the artifact store on an S3-compatible object store (AWS S3, MinIO, moto, ...), over boto3.

Opened by `store.open_store("s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1")`.
The keys below the prefix are exactly the filesystem store's paths below its root:

    <prefix>/objects/sha256/<H[0:2]>/<H>    blob whose sha256 hex digest is H
    <prefix>/names/<name>.json              named pointer: `{"uri":"cm2://sha256/<H>","sha256":"<H>","bytes":n}`
                                            (compact, in that key order: the TypeScript side's JSON.stringify)

Writes:

- Blobs are PutObject with `If-None-Match: *`; 412 PreconditionFailed means the blob is already there
  (content-addressed: every writer writes the same bytes). An object of the wrong size under a blob's key is
  replaced, as the filesystem store does. `put_file` hashes the file first, skips the upload when the blob is
  there, then streams it (one PutObject up to 5 GiB, a multipart upload above).
- `set_name` is a plain PutObject: the last writer wins, as the filesystem store's rename.
- `create_name` (first writer wins: the trainer's checkpoint pointers, the orchestrator's caches) is PutObject
  with `If-None-Match: *`; on 412 it returns the pointer that is there, on 409 ConditionalRequestConflict
  (a concurrent conditional write) it tries again a few times.

Pointer races need conditional writes. AWS S3, MinIO and moto support them. A server that ignores
`If-None-Match` turns `create_name` into a plain overwrite, so racing writers settle on the LAST writer, and two
racers may each believe they won: cm2's first-writer-wins caches and its at-most-once checkpoint commit need a
server with conditional writes.

Reads verify size and sha256 (`StoreCorruption` on a mismatch, `MissingArtifact` when absent); `copy_to`
streams to a temporary file beside the destination, verifies, then renames it into place.

Credentials come only from boto3's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
instance role); the endpoint from the URL's `endpoint` or boto3's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL;
the region from the URL, else boto3's configuration, else us-east-1. Addressing is path-style (what
self-hosted servers expect). Request checksums are sent only where S3 requires them, for servers that do not
know the newer checksum headers; integrity is the sha256 check on every read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .store import (
    ArtifactStore,
    MissingArtifact,
    Ref,
    StoreError,
    check_digest,
    decode_pointer,
    pointer_json,
    redact,
    validate_name,
    validate_sha256,
    verify_blob,
)

_CHUNK = 1 << 20
_SINGLE_PUT_MAX = 5 << 30  # S3's limit for one PutObject
_CONFLICT_ATTEMPTS = 6
DEFAULT_REGION = "us-east-1"


def make_client(endpoint: str | None, region: str | None) -> Any:
    """A boto3 S3 client: credentials and (without `endpoint`) the endpoint from boto3's own configuration."""
    session = boto3.session.Session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 5},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or session.region_name or DEFAULT_REGION,
        config=config,
    )


class S3Store(ArtifactStore):
    """Artifact store in `bucket` below `prefix` (no leading or trailing slash; "" for the bucket's root)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._endpoint = endpoint
        self._region = region
        self.client = client if client is not None else make_client(endpoint, region)

    @property
    def url(self) -> str:
        u = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        query = [f"{k}={quote(v, safe=':/')}" for k, v in (("endpoint", self._endpoint), ("region", self._region)) if v]
        return u + ("?" + "&".join(query) if query else "")

    def locate(self, ref: Ref) -> str:
        return f"s3://{self.bucket}/{self._blob_key(ref.sha256)}"

    # -- keys --------------------------------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _blob_key(self, sha256: str) -> str:
        validate_sha256(sha256)
        return self._key(f"objects/sha256/{sha256[:2]}/{sha256}")

    def _name_key(self, name: str) -> str:
        return self._key(f"names/{validate_name(name)}.json")

    # -- blobs -------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> Ref:
        ref = Ref(hashlib.sha256(data).hexdigest(), len(data))
        self._put_blob(ref, data)
        return ref

    def put_file(self, path: str | os.PathLike[str]) -> Ref:
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
            ref = Ref(h.hexdigest(), n)
            key = self._blob_key(ref.sha256)
            if self._size(key) == n:
                return ref  # already stored: skip the upload
            f.seek(0)
            if n <= _SINGLE_PUT_MAX:
                self._put_blob(ref, f)
            else:  # multipart has no If-None-Match here; every writer uploads the same bytes anyway
                self._call("upload", key, self.client.upload_fileobj, f, self.bucket, key)
        return ref

    def _put_blob(self, ref: Ref, body: bytes | IO[bytes]) -> None:
        key = self._blob_key(ref.sha256)
        for attempt in range(_CONFLICT_ATTEMPTS):
            _rewind(body)
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                return
            except ClientError as e:
                status, code = _status(e)
                if status == 412 or code == "PreconditionFailed":
                    if self._size(key) != ref.bytes:  # a torn or foreign object under this key: replace it
                        _rewind(body)
                        self._call("PutObject", key, self.client.put_object, Bucket=self.bucket, Key=key, Body=body)
                    return
                if not _is_conflict(status, code):
                    raise self._fail(e, "PutObject", key) from None
            _backoff(attempt)
        raise StoreError(f"PutObject {self.locate(ref)} kept conflicting after {_CONFLICT_ATTEMPTS} attempts")

    def _size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if _not_found(e):
                return None
            raise self._fail(e, "HeadObject", key) from None

    def has(self, ref: Ref) -> bool:
        return self._size(self._blob_key(ref.sha256)) is not None

    def _get_blob(self, ref: Ref) -> Any:
        key = self._blob_key(ref.sha256)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if _not_found(e):
                raise MissingArtifact(f"Blob {ref.uri} is not in the store at {self.url}") from None
            raise self._fail(e, "GetObject", key) from None

    def get_bytes(self, ref: Ref) -> bytes:
        body = self._get_blob(ref)
        try:
            return verify_blob(ref, body.read())
        finally:
            body.close()

    def copy_to(self, ref: Ref, dest: str | os.PathLike[str]) -> None:
        out = Path(dest)
        body = self._get_blob(ref)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        try:
            h = hashlib.sha256()
            n = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in body.iter_chunks(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
            check_digest(ref, n, h.hexdigest())
            os.replace(tmp, out)
        finally:
            body.close()
            Path(tmp).unlink(missing_ok=True)

    # -- names -------------------------------------------------------------------------------------------
    def get_name(self, name: str) -> Ref | None:
        key = self._name_key(name)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if _not_found(e):
                return None
            raise self._fail(e, "GetObject", key) from None
        try:
            return decode_pointer(body.read(), name)
        finally:
            body.close()

    def set_name(self, name: str, ref: Ref) -> None:
        key = self._name_key(name)
        self._call("PutObject", key, self.client.put_object, **self._pointer_put(key, ref))

    def create_name(self, name: str, ref: Ref) -> Ref:
        key = self._name_key(name)
        for attempt in range(_CONFLICT_ATTEMPTS):
            try:
                self.client.put_object(**self._pointer_put(key, ref), IfNoneMatch="*")
                return ref
            except ClientError as e:
                status, code = _status(e)
                if status == 412 or code == "PreconditionFailed":
                    existing = self.get_name(name)
                    if existing is not None:
                        return existing  # deleted in between: try to create it again
                elif not _is_conflict(status, code):
                    raise self._fail(e, "PutObject", key) from None
            _backoff(attempt)
        raise StoreError(f"Name {name!r} in {self.url}: creating it kept conflicting ({_CONFLICT_ATTEMPTS} attempts)")

    def list_names(self, prefix: str) -> list[str]:
        base = self._key("names/")
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    key = o["Key"]
                    if key.endswith(".json"):
                        out.append(key[len(base) : -len(".json")])
        except ClientError as e:
            raise self._fail(e, "ListObjectsV2", base + prefix) from None
        return sorted(out)

    def _pointer_put(self, key: str, ref: Ref) -> dict[str, Any]:
        return {"Bucket": self.bucket, "Key": key, "Body": pointer_json(ref), "ContentType": "application/json"}

    # -- errors ------------------------------------------------------------------------------------------
    def _call(self, op: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            raise self._fail(e, op, key) from None

    def _fail(self, e: ClientError, op: str, key: str) -> StoreError:
        status, code = _status(e)
        message = e.response.get("Error", {}).get("Message", "")
        return StoreError(redact(f"S3 {op} s3://{self.bucket}/{key} failed: HTTP {status} {code} {message}".strip()))


def _status(e: ClientError) -> tuple[int, str]:
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0), str(e.response.get("Error", {}).get("Code", ""))


def _not_found(e: ClientError) -> bool:
    """A missing key (not a missing bucket: that is an error to report)."""
    status, code = _status(e)
    return code in ("NoSuchKey", "NotFound") or (status == 404 and code == "404")


def _is_conflict(status: int, code: str) -> bool:
    return status == 409 or code == "ConditionalRequestConflict"


def _rewind(body: bytes | IO[bytes]) -> None:
    if not isinstance(body, bytes):
        body.seek(0)


def _backoff(attempt: int) -> None:
    time.sleep(min(0.05 * 2**attempt, 1.0))
