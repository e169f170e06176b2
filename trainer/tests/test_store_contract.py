"""One contract for every ArtifactStore: the filesystem store and the S3 store against a real S3-protocol server
(moto, started once per session as a subprocess on 127.0.0.1). Each case gets a fresh directory or bucket."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers import moto_server

from cm2_trainer.store import (
    ArtifactStore,
    FsStore,
    InvalidRef,
    InvalidStoreUrl,
    MissingArtifact,
    Ref,
    StoreCorruption,
    StoreError,
    open_store,
)

SECRET = "cm2-Secret-wJalrXUtnFEMI-K7MDENG-bPxRfiCY"  # a made-up secret access key


def blob_key(ref: Ref) -> str:
    return f"objects/sha256/{ref.sha256[:2]}/{ref.sha256}"


def pointer_bytes(ref: Ref) -> bytes:
    """What the TypeScript side writes: JSON.stringify({uri, sha256, bytes})."""
    return f'{{"uri":"cm2://sha256/{ref.sha256}","sha256":"{ref.sha256}","bytes":{ref.bytes}}}'.encode()


# -- the two implementations, with raw access to what they wrote ----------------------------------------------
class FsBackend:
    """A store in `container/prefix`; raw reads and writes of the files below it."""

    def __init__(self, container: Path, prefix: str) -> None:
        self.container, self.prefix = container, prefix
        self.store = open_store((container / prefix if prefix else container).as_uri())

    def _path(self, key: str) -> Path:
        return self.container / self.prefix / key

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        self._path(key).write_bytes(data)

    def keys(self) -> list[str]:
        """Every file in the container (not only below the prefix)."""
        return sorted(p.relative_to(self.container).as_posix() for p in self.container.rglob("*") if p.is_file())


class S3Backend:
    """A store in `bucket/prefix` on the moto server; raw object reads and writes through boto3."""

    def __init__(self, endpoint: str, bucket: str, prefix: str) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=bucket)
        self.store = open_store(f"s3://{bucket}{'/' + prefix if prefix else ''}?endpoint={endpoint}")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def keys(self) -> list[str]:
        """Every object in the bucket (not only below the prefix)."""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)


Backend = FsBackend | S3Backend


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials for this test only, and none of the developer's AWS configuration."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(params=["file", "s3"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Backend]:
    """`make_backend(prefix)`: a store of this parameter's kind, in a fresh directory or bucket."""
    if request.param == "file":
        return lambda prefix: FsBackend(tmp_path / "container", prefix)
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("moto_endpoint")
    return lambda prefix: S3Backend(endpoint, f"cm2-test-{secrets.token_hex(6)}", prefix)


@pytest.fixture
def backend(make_backend: Callable[[str], Backend]) -> Backend:
    return make_backend("")


@pytest.fixture
def store(backend: Backend) -> ArtifactStore:
    return backend.store


# -- blobs ---------------------------------------------------------------------------------------------------
def test_bytes_and_json_round_trip_in_the_shared_layout(backend: Backend) -> None:
    store = backend.store
    ref = store.put_bytes(b"hello")
    assert ref == Ref(hashlib.sha256(b"hello").hexdigest(), 5)
    assert store.get_bytes(ref) == b"hello"
    assert backend.read(blob_key(ref)) == b"hello"
    jref = store.put_json({"b": 1, "a": [1, "ü"]})
    assert store.get_json(jref) == {"b": 1, "a": [1, "ü"]}
    assert backend.read(blob_key(jref)) == '{"a":[1,"ü"],"b":1}'.encode()  # canonical JSON
    empty = store.put_bytes(b"")
    assert store.get_bytes(empty) == b"" and empty.bytes == 0


def test_putting_the_same_bytes_again_gives_the_same_ref(backend: Backend) -> None:
    a = backend.store.put_bytes(b"same")
    keys = backend.keys()
    assert backend.store.put_bytes(b"same") == a
    assert backend.keys() == keys


def test_put_file_streams_a_file_in_and_copy_to_writes_it_out(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    ref = store.put_file(src)
    assert ref == Ref(hashlib.sha256(data).hexdigest(), len(data))
    assert store.put_file(src) == ref
    assert store.get_bytes(ref) == data
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    store.copy_to(ref, dest)
    assert dest.read_bytes() == data and os.listdir(dest.parent) == ["copy.bin"]


def test_a_missing_blob_is_missing_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    ref = Ref(hashlib.sha256(b"never stored").hexdigest(), 12)
    assert store.has(ref) is False
    with pytest.raises(MissingArtifact, match="not in the store"):
        store.get_bytes(ref)
    with pytest.raises(MissingArtifact):
        store.copy_to(ref, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_corrupted_blob_is_store_corruption(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    ref = store.put_bytes(b"payload")
    backend.write(blob_key(ref), b"PAYLOAD")  # same size, other content
    with pytest.raises(StoreCorruption, match="hashes to"):
        store.get_bytes(ref)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StoreCorruption):
        store.copy_to(ref, out / "f")
    assert os.listdir(out) == []  # no partial or unverified file left behind
    backend.write(blob_key(ref), b"pay")
    with pytest.raises(StoreCorruption, match="3 bytes"):
        store.get_bytes(ref)


def test_has_tells_whether_a_blob_is_there(store: ArtifactStore) -> None:
    ref = Ref(hashlib.sha256(b"later").hexdigest(), 5)
    assert not store.has(ref)
    assert store.put_bytes(b"later") == ref
    assert store.has(ref)


# -- names ---------------------------------------------------------------------------------------------------
def test_get_name_of_an_unset_name_is_none(store: ArtifactStore) -> None:
    assert store.get_name("runs/r1/checkpoints/it-0") is None


def test_set_name_overwrites(backend: Backend) -> None:
    store = backend.store
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    store.set_name("runs/r1/latest", a)
    assert store.get_name("runs/r1/latest") == a
    store.set_name("runs/r1/latest", b)
    assert store.get_name("runs/r1/latest") == b
    assert backend.read("names/runs/r1/latest.json") == pointer_bytes(b)


def test_pointers_are_the_compact_json_ref(backend: Backend) -> None:
    store = backend.store
    ref = store.put_bytes(b"x" * 300)
    store.set_name("a", ref)
    store.create_name("runs/r1/checkpoints/it-3", ref)
    h = ref.sha256
    expected = f'{{"uri":"cm2://sha256/{h}","sha256":"{h}","bytes":300}}'.encode()
    assert backend.read("names/a.json") == expected
    assert backend.read("names/runs/r1/checkpoints/it-3.json") == expected
    backend.write("names/bad.json", b'{"uri": "x"}')  # a malformed pointer is reported, not trusted
    with pytest.raises(StoreCorruption):
        store.get_name("bad")


def test_create_name_first_writer_wins(store: ArtifactStore) -> None:
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    assert store.create_name("runs/r1/checkpoints/it-0", a) == a
    assert store.create_name("runs/r1/checkpoints/it-0", b) == a
    assert store.get_name("runs/r1/checkpoints/it-0") == a


def test_list_names_lists_the_names_under_a_prefix_sorted(make_backend: Callable[[str], Backend]) -> None:
    store = make_backend("pre/fix").store  # below a prefix, as a deployed store may be
    ref = store.put_bytes(b"x")
    for name in ("sft/r1/step-10", "sft/r1/step-2", "sft/r1/final", "sft/r10/step-1", "runs/r1/checkpoints/it-0"):
        store.set_name(name, ref)
    assert store.list_names("sft/r1/step-") == ["sft/r1/step-10", "sft/r1/step-2"]
    assert store.list_names("sft/r1/") == ["sft/r1/final", "sft/r1/step-10", "sft/r1/step-2"]
    assert store.list_names("sft/r1") == ["sft/r1/final", "sft/r1/step-10", "sft/r1/step-2", "sft/r10/step-1"]
    assert store.list_names("sft/none/") == []
    assert len(store.list_names("")) == 5


def test_create_name_race_has_one_winner_that_everyone_sees(backend: Backend) -> None:
    store = backend.store
    refs = [store.put_bytes(f"candidate {i}".encode()) for i in range(8)]
    barrier = threading.Barrier(len(refs))
    seen: list[Any] = [None] * len(refs)
    errors: list[BaseException] = []

    def race(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            seen[i] = store.create_name("cache/answer", refs[i])
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(refs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    winner = seen[0]
    assert winner in refs and all(s == winner for s in seen), seen
    assert store.get_name("cache/answer") == winner
    assert backend.read("names/cache/answer.json") == pointer_bytes(winner)


@pytest.mark.parametrize("name", ["../x", "a/../b", "/abs", "a//b", ".hidden", "a/", "", "a\\b", "..", "a b", "ü"])
def test_invalid_names_are_rejected(backend: Backend, name: str) -> None:
    store = backend.store
    ref = store.put_bytes(b"x")
    for call in (lambda: store.set_name(name, ref), lambda: store.create_name(name, ref), lambda: store.get_name(name)):
        with pytest.raises(InvalidRef):
            call()
    assert not [k for k in backend.keys() if "/names/" in f"/{k}"]
    with pytest.raises(InvalidRef):
        store.get_bytes(Ref("../" * 21 + "x", 1))


# -- URLs ----------------------------------------------------------------------------------------------------
def test_a_store_with_a_prefix_keeps_everything_under_it(make_backend: Callable[[str], Backend], tmp_path) -> None:
    backend = make_backend("some/prefix")
    store = backend.store
    ref = store.put_bytes(b"blob")
    f = tmp_path / "f.bin"
    f.write_bytes(b"file")
    fref = store.put_file(f)
    store.set_name("runs/r/latest", ref)
    store.create_name("runs/r/checkpoints/it-0", fref)
    keys = backend.keys()
    assert keys and all(k.startswith("some/prefix/") for k in keys), keys
    assert f"some/prefix/{blob_key(ref)}" in keys and "some/prefix/names/runs/r/latest.json" in keys
    again = open_store(store.url)  # the URL names the same store
    assert type(again) is type(store) and again.url == store.url
    assert again.get_bytes(fref) == b"file" and again.get_name("runs/r/checkpoints/it-0") == fref


def _root(url: str, base: Path | None = None) -> Path:
    s = open_store(url, base=base)
    assert isinstance(s, FsStore)
    return s.root


def test_open_store_file_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = tmp_path.resolve()
    assert _root("file:rel/store", base=tmp_path) == tmp / "rel" / "store"
    assert open_store("file:rel/store", base=tmp_path).url == (tmp / "rel" / "store").as_uri()
    assert _root("plain", base=tmp_path) == tmp / "plain"
    assert _root(f"file://{tmp}/a%20b") == tmp / "a b"
    assert _root(f"file://localhost{tmp}/x") == tmp / "x"
    assert _root(str(tmp / "abs"), base=Path("/elsewhere")) == tmp / "abs"
    assert _root(f"file://{tmp}/abs2", base=Path("/elsewhere")) == tmp / "abs2"
    monkeypatch.chdir(tmp_path)
    assert _root("file:cwd-store") == tmp / "cwd-store"


def test_open_store_s3_form(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from cm2_trainer.s3_store import S3Store

    s = open_store("s3://cm2-bucket/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert isinstance(s, S3Store) and (s.bucket, s.prefix) == ("cm2-bucket", "some/prefix")
    assert s.url == "s3://cm2-bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1"
    assert s.client.meta.endpoint_url == "http://127.0.0.1:9000" and s.client.meta.region_name == "eu-west-1"
    assert s.client.meta.config.s3["addressing_style"] == "path"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9123")  # boto3's own variable
    d = open_store("s3://cm2-bucket")
    assert isinstance(d, S3Store) and d.prefix == "" and d.url == "s3://cm2-bucket"
    assert d.client.meta.endpoint_url == "http://127.0.0.1:9123" and d.client.meta.region_name == "us-east-1"


@pytest.mark.parametrize(
    "url,why",
    [
        ("ftp://x", "scheme 'ftp'"),
        ("s3://", "no bucket"),
        ("s3:///only/prefix", "no bucket"),
        ("s3://No_Such_Bucket", "bucket"),
        ("s3://bucket/a/../b", "prefix"),
        ("s3://bucket?endpoint=ftp://host", "endpoint"),
        ("s3://bucket?color=red", "'color'"),
        ("s3://bucket?region=a&region=b", "repeats"),
        ("file://otherhost/x", "host"),
        ("", "empty"),
    ],
)
def test_open_store_rejects_other_urls_naming_the_url_and_the_accepted_forms(url: str, why: str) -> None:
    with pytest.raises(InvalidStoreUrl) as e:
        open_store(url)
    msg = str(e.value)
    assert repr(url) in msg and why in msg and "file:///abs/path" in msg and "s3://bucket" in msg, msg


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIDEXAMPLE:{SECRET}@bucket/p",
        f"s3://bucket/p?endpoint=http://AKIDEXAMPLE:{SECRET}@127.0.0.1:9000",
        f"s3://bucket/p?endpoint=http%3A%2F%2FAKID%3A{SECRET}%40127.0.0.1%3A9000",
        f"ftp://user:{SECRET}@host/x",
        f"s3://bucket?region={SECRET}",
        f"s3://bucket?{SECRET}=1",
    ],
)
def test_url_errors_never_show_the_secret_key(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(InvalidStoreUrl) as e:
        open_store(url)
    assert SECRET not in str(e.value) and SECRET not in repr(e.value) and "Store URL" in str(e.value)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIDEXAMPLE:url-only-password@bucket/p",
        "s3://bucket/p?endpoint=http://AKIDEXAMPLE:url-only-password@127.0.0.1:9000",
        "s3://bucket/p?endpoint=http%3A%2F%2FAKID%3Aurl-only-password%40127.0.0.1%3A9000",
    ],
)
def test_url_errors_mask_credentials_in_the_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(InvalidStoreUrl) as e:
        open_store(url)
    assert "url-only-password" not in str(e.value) and "credentials" in str(e.value)


def test_s3_store_url_and_errors_never_show_the_secret_key(
    aws_env: None, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = open_store(f"s3://cm2-no-such-bucket-{secrets.token_hex(4)}/p?endpoint={moto_endpoint}")
    assert SECRET not in store.url and SECRET not in repr(store)
    with pytest.raises(StoreError) as e:
        store.put_bytes(b"x")
    assert "NoSuchBucket" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(StoreError) as e:  # a missing bucket is an error to report, not a missing artifact
        store.get_bytes(Ref(hashlib.sha256(b"x").hexdigest(), 1))
    assert not isinstance(e.value, MissingArtifact) and SECRET not in str(e.value)
    with pytest.raises(StoreError):  # nor an unset name
        store.get_name("runs/r/latest")


# -- S3 conditional-write conflicts (a scripted client: moto never answers 409) -------------------------------
def test_s3_create_name_retries_a_conditional_write_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    import cm2_trainer.s3_store as s3

    class Client:
        calls: list[dict[str, Any]] = []

        def put_object(self, **kw: Any) -> dict[str, Any]:
            self.calls.append(kw)
            if len(self.calls) <= 2:
                err = {"Code": "ConditionalRequestConflict", "Message": "concurrent write"}
                raise ClientError({"Error": err, "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
            return {}

    monkeypatch.setattr(s3, "_backoff", lambda attempt: None)
    client = Client()
    store = s3.S3Store("cm2-bucket", "p", client=client)
    ref = Ref("ab" * 32, 3)
    assert store.create_name("runs/r/checkpoints/it-0", ref) == ref
    assert len(client.calls) == 3
    assert all(c["IfNoneMatch"] == "*" and c["Key"] == "p/names/runs/r/checkpoints/it-0.json" for c in client.calls)
