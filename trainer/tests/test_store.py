import hashlib
import json
import os

import pytest

from cm2_trainer.store import FsStore, InvalidRef, MissingArtifact, Ref, StoreCorruption


def test_put_get_roundtrip_and_layout(tmp_path):
    s = FsStore(tmp_path)
    ref = s.put_bytes(b"hello")
    h = hashlib.sha256(b"hello").hexdigest()
    assert ref.to_json() == {"uri": f"cm2://sha256/{h}", "sha256": h, "bytes": 5}
    assert (tmp_path / "objects" / "sha256" / h[:2] / h).read_bytes() == b"hello"
    assert s.get_bytes(ref) == b"hello"
    assert s.put_bytes(b"hello") == ref  # content-addressed, idempotent
    assert os.listdir(tmp_path / "tmp") == []  # staging files are cleaned up


def test_put_file_streams_and_matches_put_bytes(tmp_path):
    s = FsStore(tmp_path / "store")
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(3 << 20))
    assert s.put_file(f) == Ref(hashlib.sha256(f.read_bytes()).hexdigest(), 3 << 20)


def test_names_roundtrip_and_first_writer_wins(tmp_path):
    s = FsStore(tmp_path)
    a, b = s.put_bytes(b"a"), s.put_bytes(b"b")
    assert s.get_name("runs/r1/checkpoints/it-0") is None
    assert s.create_name("runs/r1/checkpoints/it-0", a) == a
    assert s.create_name("runs/r1/checkpoints/it-0", b) == a  # exists: the first pointer stays
    assert json.loads((tmp_path / "names/runs/r1/checkpoints/it-0.json").read_text()) == a.to_json()
    s.set_name("latest", a)
    s.set_name("latest", b)
    assert s.get_name("latest") == b


@pytest.mark.parametrize(
    "name", ["../x", "a/../b", "/abs", "a//b", ".hidden", "a/", "", "a\\b", "a/./b", "a/..", "..", "a b", "ü"]
)
def test_rejects_escaping_or_malformed_names(tmp_path, name):
    s = FsStore(tmp_path)
    ref = s.put_bytes(b"x")
    with pytest.raises(InvalidRef):
        s.set_name(name, ref)
    with pytest.raises(InvalidRef):
        s.get_name(name)


GOOD = "ab" * 32


@pytest.mark.parametrize(
    "obj",
    [
        {"uri": f"cm2://sha256/{GOOD.upper()}", "sha256": GOOD.upper(), "bytes": 1},
        {"uri": f"cm2://sha256/{GOOD[:-1]}", "sha256": GOOD[:-1], "bytes": 1},
        {"uri": "cm2://sha256/../../etc/passwd", "sha256": "../../etc/passwd", "bytes": 1},
        {"uri": f"cm2://sha256/{'cd' * 32}", "sha256": GOOD, "bytes": 1},
        {"uri": f"file:///{GOOD}", "sha256": GOOD, "bytes": 1},
        {"uri": f"cm2://sha256/{GOOD}", "sha256": GOOD, "bytes": -1},
        {"uri": f"cm2://sha256/{GOOD}", "sha256": GOOD, "bytes": True},
        {"uri": f"cm2://sha256/{GOOD}", "sha256": GOOD, "bytes": 1, "extra": 1},
        {"uri": f"cm2://sha256/{GOOD}", "sha256": GOOD},
        "cm2://sha256/" + GOOD,
    ],
)
def test_rejects_bad_refs(obj):
    with pytest.raises(InvalidRef):
        Ref.from_json(obj)


def test_blob_path_validates_hex(tmp_path):
    with pytest.raises(InvalidRef):
        FsStore(tmp_path).get_bytes(Ref("../" * 21 + "x", 1))


def test_detects_corruption_and_missing(tmp_path):
    s = FsStore(tmp_path)
    ref = s.put_bytes(b"payload")
    p = tmp_path / "objects" / "sha256" / ref.sha256[:2] / ref.sha256
    p.write_bytes(b"PAYLOAD")  # same size, different content
    with pytest.raises(StoreCorruption, match="hashes to"):
        s.get_bytes(ref)
    p.write_bytes(b"pay")
    with pytest.raises(StoreCorruption, match="3 bytes"):
        s.get_bytes(ref)
    p.unlink()
    with pytest.raises(MissingArtifact):
        s.get_bytes(ref)
    # a corrupt pointer file is reported, not trusted
    (tmp_path / "names").mkdir(exist_ok=True)
    (tmp_path / "names" / "bad.json").write_text('{"uri": "x"}')
    with pytest.raises(StoreCorruption):
        s.get_name("bad")
