"""The activity function without a server (temporalio.testing.ActivityEnvironment)."""

import time

import pytest
from helpers import batch_obj, request_obj
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import cm2_trainer.update as upd
from cm2_trainer.store import FsStore
from cm2_trainer.worker import make_update_activity


def test_keepalive_heartbeats_during_phases_without_progress(tmp_path, base_dir, monkeypatch):
    store = FsStore(tmp_path)
    req = request_obj(store.url, store.put_json(batch_obj()), base_dir)

    def slow_update(r, *, heartbeat, cache, defaults):
        time.sleep(0.5)  # e.g. loading a large base model: no progress callback for a while
        raise upd.ContractError("stop here")

    monkeypatch.setattr(upd, "update_policy", slow_update)
    beats = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    act = make_update_activity(keepalive_s=0.05)
    with pytest.raises(ApplicationError) as e:
        env.run(act, req)
    assert e.value.type == "InvalidBatch" and e.value.non_retryable and "stop here" in e.value.message
    assert len(beats) >= 3


@pytest.mark.parametrize(
    "mutate,type_,message",
    [
        (lambda r: r.update(iteration="1"), "InvalidBatch", "request.iteration is '1'"),
        (lambda r: r.update(storeUrl="ftp://host/store"), "InvalidBatch", "Store URL 'ftp://host/store'"),
        (
            lambda r: r["batch"].update(sha256="0" * 64, uri="cm2://sha256/" + "0" * 64),
            "MissingArtifact",
            "not in the store",
        ),
    ],
)
def test_errors_are_typed_and_non_retryable(tmp_path, base_dir, mutate, type_, message):
    store = FsStore(tmp_path)
    req = request_obj(store.url, store.put_json(batch_obj()), base_dir)
    mutate(req)
    with pytest.raises(ApplicationError) as e:
        ActivityEnvironment().run(make_update_activity(), req)
    assert e.value.type == type_ and e.value.non_retryable and message in e.value.message


def test_corrupt_batch_blob_is_store_corruption(tmp_path, base_dir):
    store = FsStore(tmp_path)
    ref = store.put_json(batch_obj())
    (tmp_path / "objects/sha256" / ref.sha256[:2] / ref.sha256).write_bytes(b"x" * ref.bytes)
    with pytest.raises(ApplicationError) as e:
        ActivityEnvironment().run(make_update_activity(), request_obj(store.url, ref, base_dir))
    assert e.value.type == "StoreCorruption" and e.value.non_retryable


def test_sft_activity_returns_a_valid_result_and_types_its_errors(tmp_path, base_dir):
    from test_sft import put_dataset, record
    from test_sft import request_obj as sft_request_obj

    from cm2_trainer.contract import decode_sft_result
    from cm2_trainer.worker import make_sft_activity

    store = FsStore(tmp_path)
    ds = put_dataset(store, "train", [record("Paris")])
    beats = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    out = env.run(make_sft_activity(), sft_request_obj(store, base_dir, ds))
    assert decode_sft_result(out) == out and out["steps"] == 1 and out["reused"] is False
    assert {"phase": "train", "step": 1, "of": 1, "loss": out["history"][0]["loss"]} in beats

    for bad, message in [
        (sft_request_obj(store, base_dir, ds, warmupRatio=1.5), "request.sft.warmupRatio is 1.5"),
        (sft_request_obj(store, base_dir, ds, run_id="s2", maxTokens=10), "Dataset 'train'"),
    ]:
        with pytest.raises(ApplicationError) as e:
            ActivityEnvironment().run(make_sft_activity(), bad)
        assert e.value.type == "InvalidBatch" and e.value.non_retryable and message in e.value.message
