"""Content-addressed artifact store on the filesystem: the same on-disk layout as the TypeScript side.

Layout under the root (default `<repo>/.cm2/store`, always passed in):

    objects/sha256/<H[0:2]>/<H>     blob whose sha256 hex digest is H (64 lowercase hex chars)
    names/<name>.json               named pointer: a JSON ref, e.g. names/runs/r1/checkpoints/it-3.json
    tmp/<random>                    staging for atomic writes (write, fsync, os.replace)

A ref is `{"uri": "cm2://sha256/<H>", "sha256": H, "bytes": n}`. Reads verify size and digest and raise
`StoreCorruption` on mismatch. Names match NAME_RE, have no `..` segment, and can never leave the root;
refs are checked the same way (the path comes from a validated hex digest only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Store:
    """Filesystem store. Thread-safe for concurrent writers of the same blob (content-addressed)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    # -- paths -------------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not HEX_RE.match(sha256):
            raise InvalidRef(f"sha256 {sha256!r} is not 64 lowercase hex characters")
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

    def put_json(self, obj: Any) -> Ref:
        return self.put_bytes(canonical_json(obj))

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
        if len(data) != ref.bytes:
            raise StoreCorruption(f"Blob {ref.uri} has {len(data)} bytes, its ref says {ref.bytes}")
        got = hashlib.sha256(data).hexdigest()
        if got != ref.sha256:
            raise StoreCorruption(f"Blob {ref.uri} hashes to {got}")
        return data

    def get_json(self, ref: Ref) -> Any:
        return json.loads(self.get_bytes(ref))

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
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise StoreCorruption(f"Name {name!r} holds invalid JSON: {e}") from None
        try:
            return Ref.from_json(obj, where=f"name {name!r}")
        except InvalidRef as e:
            raise StoreCorruption(str(e)) from None

    def set_name(self, name: str, ref: Ref) -> None:
        """Point name at ref, replacing any previous pointer, atomically."""
        p = self._name_path(name)
        tmp = self._write_tmp(canonical_json(ref.to_json()))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, p)
            _fsync_dir(p.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def create_name(self, name: str, ref: Ref) -> Ref:
        """Point name at ref only if it does not exist yet (first writer wins, atomically via link(2)).

        Returns the ref the name holds afterwards: `ref` if this call created it, else the existing one.
        """
        p = self._name_path(name)
        tmp = self._write_tmp(canonical_json(ref.to_json()))
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

    def _write_tmp(self, data: bytes) -> Path:
        tmp = self._tmp()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


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
