"""Content-addressed artifact store: the interface, its filesystem implementation, and `open_store(url)`.

A store is opened from a URL (the URL, never a host path, crosses the wire):

    file:///abs/path, file:relative/path, /abs/path or relative/path   -> FsStore (relative to `base`)
    s3://bucket[/prefix][?endpoint=http://127.0.0.1:9000&region=us-east-1] -> S3Store (s3_store.py)

Both keep the same layout as the TypeScript side, below the root (or the S3 prefix):

    objects/sha256/<H[0:2]>/<H>     blob whose sha256 hex digest is H (64 lowercase hex chars)
    names/<name>.json               named pointer: a JSON ref, e.g. names/runs/r1/checkpoints/it-3.json
    tmp/<random>                    filesystem only: staging for atomic writes (write, fsync, os.replace)

A ref is `{"uri": "cm2://sha256/<H>", "sha256": H, "bytes": n}`; a pointer file holds it as compact JSON in
that key order (`pointer_json`, byte-identical to the TypeScript side's `JSON.stringify(ref)`). Reads verify
size and digest and raise `StoreCorruption` on mismatch. Names match NAME_RE, have no `..` segment, and can
never leave the root; refs are checked the same way (the path comes from a validated hex digest only).

S3 credentials come only from the environment (boto3's default chain); a URL carrying credentials is refused,
and no error message or `url` ever shows them.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

HEX_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
URI_PREFIX = "cm2://sha256/"
MAX_NAME = 400  # as the TypeScript store
_CHUNK = 1 << 20


class StoreError(Exception):
    """Base class of store errors."""


class InvalidRef(StoreError, ValueError):
    """A ref or a name that is malformed or would leave the store root."""


class MissingArtifact(StoreError, FileNotFoundError):
    """A ref or name that points at nothing."""


class StoreCorruption(StoreError):
    """A blob whose size or sha256 does not match its ref."""


class InvalidStoreUrl(StoreError, ValueError):
    """A store URL that `open_store` does not accept."""


@dataclass(frozen=True)
class Ref:
    sha256: str
    bytes: int

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.sha256

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "bytes": self.bytes}

    @staticmethod
    def from_json(obj: Any, where: str = "ref") -> "Ref":
        """Strictly decode a JSON ref; raises InvalidRef naming the field and the value."""
        if not isinstance(obj, dict):
            raise InvalidRef(f"{where} is {obj!r}, expected an object with uri, sha256, bytes")
        extra = set(obj) - {"uri", "sha256", "bytes"}
        if extra:
            raise InvalidRef(f"{where} has unknown fields {sorted(extra)}")
        h = obj.get("sha256")
        if not isinstance(h, str) or not HEX_RE.match(h):
            raise InvalidRef(f"{where}.sha256 is {h!r}, expected 64 lowercase hex characters")
        uri = obj.get("uri")
        if uri != URI_PREFIX + h:
            raise InvalidRef(f"{where}.uri is {uri!r}, expected {URI_PREFIX + h!r}")
        n = obj.get("bytes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidRef(f"{where}.bytes is {n!r}, expected a non-negative integer")
        return Ref(h, n)


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRef(f"Store name {name!r} does not match {NAME_RE.pattern}")
    if any(seg in (".", "..") for seg in name.split("/")):
        raise InvalidRef(f"Store name {name!r} has a '.' or '..' segment")
    if len(name) > MAX_NAME:
        raise InvalidRef(f"Store name of {len(name)} characters is longer than {MAX_NAME}")
    return name


def validate_sha256(sha256: Any) -> str:
    if not isinstance(sha256, str) or not HEX_RE.match(sha256):
        raise InvalidRef(f"sha256 {sha256!r} is not 64 lowercase hex characters")
    return sha256


def pointer_json(ref: Ref) -> bytes:
    """The bytes of a named pointer: `{"uri":…,"sha256":…,"bytes":n}`, compact, in that key order."""
    return json.dumps(ref.to_json(), separators=(",", ":")).encode()


def decode_pointer(raw: bytes, name: str) -> Ref:
    """Decode a pointer's bytes; anything malformed is `StoreCorruption`, never trusted."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreCorruption(f"Name {name!r} holds invalid JSON: {e}") from None
    try:
        return Ref.from_json(obj, where=f"name {name!r}")
    except InvalidRef as e:
        raise StoreCorruption(str(e)) from None


def verify_blob(ref: Ref, data: bytes) -> bytes:
    check_digest(ref, len(data), hashlib.sha256(data).hexdigest())
    return data


def check_digest(ref: Ref, n: int, sha256: str) -> None:
    """Raise `StoreCorruption` unless a blob of `n` bytes hashing to `sha256` is what `ref` names."""
    if n != ref.bytes:
        raise StoreCorruption(f"Blob {ref.uri} has {n} bytes, its ref says {ref.bytes}")
    if sha256 != ref.sha256:
        raise StoreCorruption(f"Blob {ref.uri} hashes to {sha256}")


class ArtifactStore(abc.ABC):
    """Content-addressed blobs plus named pointers (the TypeScript `ArtifactStore`). Implementations are safe
    for concurrent writers of the same blob (content-addressed) and of the same name (`create_name`)."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL this store opens from (`open_store(store.url)`), never with credentials."""

    @abc.abstractmethod
    def locate(self, ref: Ref) -> str:
        """Where a blob lives (a path or URL), for messages."""

    @abc.abstractmethod
    def put_bytes(self, data: bytes) -> Ref:
        """Store bytes; the same bytes give the same ref (idempotent)."""

    @abc.abstractmethod
    def put_file(self, path: str | os.PathLike[str]) -> Ref:
        """Store a file's contents without reading it all into memory."""

    def put_json(self, obj: Any) -> Ref:
        return self.put_bytes(canonical_json(obj))

    @abc.abstractmethod
    def has(self, ref: Ref) -> bool:
        """Whether the blob exists (not verified)."""

    @abc.abstractmethod
    def get_bytes(self, ref: Ref) -> bytes:
        """The verified blob; `MissingArtifact` when absent, `StoreCorruption` on a size or sha256 mismatch."""

    def get_json(self, ref: Ref) -> Any:
        return json.loads(self.get_bytes(ref))

    @abc.abstractmethod
    def copy_to(self, ref: Ref, dest: str | os.PathLike[str]) -> None:
        """Write a verified copy of a blob to dest."""

    @abc.abstractmethod
    def get_name(self, name: str) -> Ref | None:
        """The ref a name points at, or None."""

    @abc.abstractmethod
    def set_name(self, name: str, ref: Ref) -> None:
        """Point name at ref, replacing any previous pointer, atomically."""

    @abc.abstractmethod
    def create_name(self, name: str, ref: Ref) -> Ref:
        """Point name at ref only if it is unset (first writer wins); returns the ref the name holds afterwards:
        `ref` if this call created it, else the existing one."""

    @abc.abstractmethod
    def list_names(self, prefix: str) -> list[str]:
        """The names that start with `prefix` (a plain string prefix, e.g. `sft/r1/step-`), sorted."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class FsStore(ArtifactStore):
    """Filesystem store. Thread-safe for concurrent writers of the same blob (content-addressed)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def locate(self, ref: Ref) -> str:
        return str(self._blob_path(ref.sha256))

    # -- paths -------------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str) -> Path:
        validate_sha256(sha256)
        return self.root / "objects" / "sha256" / sha256[:2] / sha256

    def _name_path(self, name: str) -> Path:
        validate_name(name)
        p = self.root / "names" / f"{name}.json"
        names_root = self.root / "names"
        # Defence in depth: the regex already excludes '..', absolute paths and backslashes.
        if names_root not in p.resolve().parents:
            raise InvalidRef(f"Store name {name!r} resolves outside {names_root}")
        return p

    def _tmp(self) -> Path:
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{os.getpid()}-{secrets.token_hex(8)}"

    # -- blobs -------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> Ref:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._commit_blob(tmp, hashlib.sha256(data).hexdigest(), len(data))
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, path: str | os.PathLike[str]) -> Ref:
        """Copy a file into the store, hashing while copying (no full read into memory)."""
        tmp = self._tmp()
        h = hashlib.sha256()
        n = 0
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                    n += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            return self._commit_blob(tmp, h.hexdigest(), n)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit_blob(self, tmp: Path, sha256: str, n: int) -> Ref:
        dest = self._blob_path(sha256)
        if dest.exists() and dest.stat().st_size == n:
            return Ref(sha256, n)  # content-addressed: an identical blob is already there
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return Ref(sha256, n)

    def has(self, ref: Ref) -> bool:
        return self._blob_path(ref.sha256).exists()

    def get_bytes(self, ref: Ref) -> bytes:
        p = self._blob_path(ref.sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise MissingArtifact(f"Blob {ref.uri} is not in the store at {self.root}") from None
        return verify_blob(ref, data)

    def copy_to(self, ref: Ref, dest: str | os.PathLike[str]) -> None:
        """Write a verified copy of a blob to dest."""
        data = self.get_bytes(ref)
        with open(dest, "wb") as f:
            f.write(data)

    # -- names -------------------------------------------------------------------------------------------
    def get_name(self, name: str) -> Ref | None:
        p = self._name_path(name)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return None
        return decode_pointer(raw, name)

    def set_name(self, name: str, ref: Ref) -> None:
        p = self._name_path(name)
        tmp = self._write_tmp(pointer_json(ref))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, p)
            _fsync_dir(p.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def create_name(self, name: str, ref: Ref) -> Ref:
        """First writer wins, atomically via link(2)."""
        p = self._name_path(name)
        tmp = self._write_tmp(pointer_json(ref))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, p)
            except FileExistsError:
                existing = self.get_name(name)
                assert existing is not None
                return existing
            _fsync_dir(p.parent)
            return ref
        finally:
            tmp.unlink(missing_ok=True)

    def list_names(self, prefix: str) -> list[str]:
        names_root = self.root / "names"
        # Walk only below the prefix's directory part: a run's names, not the whole store's.
        head = prefix.rpartition("/")[0]
        top = names_root / validate_name(head) if head else names_root
        out = []
        for p in top.rglob("*.json") if top.is_dir() else []:
            name = p.relative_to(names_root).as_posix()[: -len(".json")]
            if p.is_file() and name.startswith(prefix) and NAME_RE.match(name):
                out.append(name)
        return sorted(out)

    def _write_tmp(self, data: bytes) -> Path:
        tmp = self._tmp()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


# -- opening a store from a URL ----------------------------------------------------------------------------
ACCEPTED_URLS = (
    "file:///abs/path, file:relative/path, a plain filesystem path, "
    "s3://bucket[/prefix][?endpoint=http://host:port&region=us-east-1]"
)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # 2+ characters: never a Windows drive letter
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_REGION_RE = re.compile(r"^[a-z0-9-]{1,64}$")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def open_store(url: str | os.PathLike[str], base: Path | None = None) -> ArtifactStore:
    """Open the store a URL names: `file:` URLs and plain paths (relative ones resolve against `base`, default
    the working directory) give an `FsStore`, `s3://` URLs an `S3Store`. Raises `InvalidStoreUrl` otherwise."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise InvalidStoreUrl(f"Store URL {url!r} is empty; expected one of: {ACCEPTED_URLS}")
    m = _SCHEME_RE.match(url)
    if m is None:
        return FsStore(_resolve(Path(url), base))
    scheme = m.group(1).lower()
    if scheme == "file":
        return FsStore(_resolve(_file_path(url), base))
    if scheme == "s3":
        return _open_s3(url)
    raise _bad(url, f"has scheme {scheme!r}")


def store_url_arg(value: str) -> str:
    """argparse `type=` of a `--store URL` flag: fails at start with the reason; relative paths become absolute."""
    import argparse

    try:
        return open_store(value).url
    except InvalidStoreUrl as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _resolve(p: Path, base: Path | None) -> Path:
    return p if p.is_absolute() else (base if base is not None else Path.cwd()) / p


def _file_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _bad(url, f"names host {parts.netloc!r} (only local paths: file:///abs/path)")
    if parts.query or parts.fragment:
        raise _bad(url, "has a query or fragment")
    path = unquote(parts.path)
    if not path or "\0" in path:
        raise _bad(url, "has no path")
    return Path(path)


def _open_s3(url: str) -> ArtifactStore:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise _bad(url, "carries credentials; give them in the environment (AWS_ACCESS_KEY_ID, ...)")
    bucket = parts.netloc
    if not bucket:
        raise _bad(url, "has no bucket")
    if not _BUCKET_RE.match(bucket):
        raise _bad(url, f"has bucket {bucket!r}, expected 3-63 of a-z 0-9 . -")
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(not _SEGMENT_RE.match(s) or s in (".", "..") for s in segments):
        raise _bad(url, f"has prefix {prefix!r}, expected segments of A-Z a-z 0-9 . _ - (no '.', '..', '//')")
    if parts.fragment:
        raise _bad(url, "has a fragment")
    options = _s3_options(url, parts.query)
    from .s3_store import S3Store

    return S3Store(bucket, prefix, endpoint=options.get("endpoint"), region=options.get("region"))


def _s3_options(url: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(url, "has a malformed query") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in ("endpoint", "region"):
            raise _bad(url, f"has query parameter {key!r}; accepted: endpoint, region")
        if key in options:
            raise _bad(url, f"repeats query parameter {key!r}")
        options[key] = value
    endpoint = options.get("endpoint")
    if endpoint is not None:
        e = urlsplit(endpoint)
        if "@" in e.netloc:
            raise _bad(url, "has an endpoint with credentials; give them in the environment (AWS_ACCESS_KEY_ID, ...)")
        if e.scheme not in ("http", "https") or not e.netloc or e.query or e.fragment:
            raise _bad(url, "has an endpoint that is not http(s)://host[:port][/path]")
    region = options.get("region")
    if region is not None and not _REGION_RE.match(region):
        raise _bad(url, f"has region {region!r}, expected lowercase letters, digits and '-'")
    return options


def _bad(url: str, why: str) -> InvalidStoreUrl:
    return InvalidStoreUrl(f"Store URL {redact(url)!r} {redact(why)}; expected one of: {ACCEPTED_URLS}")


def redact(text: str) -> str:
    """`text` with URL user-info (`//user:secret@`) and the values of the AWS secret variables masked."""
    text = re.sub(r"//[^/?#\s]*@", "//***@", unquote(text))
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 8:  # a real secret; never mask short words out of a message
            text = text.replace(value, "***")
    return text


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8; NaN/Infinity are rejected."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
