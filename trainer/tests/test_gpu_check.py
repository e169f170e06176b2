import json

import pytest


def test_gpu_check_tiny_prints_one_json_line(capsys):
    from cm2_trainer import gpu_check

    gpu_check.main(["--tiny"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    res = json.loads(lines[0])
    for k in ("params", "tokens_per_s", "peak_mem_gb", "ceiling_tokens_per_s", "ceiling_peak_mem_gb"):
        assert isinstance(res[k], (int, float)) and res[k] >= 0, k
    assert res["params"] > 0 and res["tokens_per_s"] > 0 and res["ceiling_tokens_per_s"] > 0


def test_worker_help_documents_the_flags(capsys):
    from cm2_trainer import worker

    with pytest.raises(SystemExit) as e:
        worker.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--address",
        "TEMPORAL_ADDRESS",
        "--namespace",
        "TEMPORAL_NAMESPACE",
        "--task-queue",
        "--store",
        "--device",
        "--micro-batch-size",
        "kl_coef",
    ):
        assert flag in out, flag


def test_worker_store_flag_takes_a_url(tmp_path, monkeypatch):
    from cm2_trainer import worker

    monkeypatch.chdir(tmp_path)
    assert worker.parse_args(["--store", "rel/store"]).store == (tmp_path.resolve() / "rel" / "store").as_uri()
    assert worker.parse_args(["--store", "s3://cm2-bucket/p"]).store == "s3://cm2-bucket/p"
    assert worker.parse_args([]).store is None
    for bad in (["--store", "ftp://host/x"], ["--store-root", "x"]):
        with pytest.raises(SystemExit) as e:
            worker.parse_args(bad)
        assert e.value.code == 2


def test_pack_benchmark_tiny_compares_both_variants(capsys):
    from cm2_trainer import bench_pack

    bench_pack.main(["--tiny", "--rounds", "1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    res = json.loads(lines[0])
    assert res["rows"] == {"packed": 1, "unpacked": 4}  # the group of 4 is one packed row
    assert res["packed_s"] > 0 and res["unpacked_s"] > 0 and res["speedup"] > 0
