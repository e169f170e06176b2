import json
import os
import subprocess
import sys


def test_gpu_check_tiny_prints_one_json_line():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "cm2_trainer.gpu_check", "--tiny"], capture_output=True,
                         text=True, timeout=180, env=env, check=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stdout
    res = json.loads(lines[0])
    for k in ("params", "tokens_per_s", "peak_mem_gb", "ceiling_tokens_per_s", "ceiling_peak_mem_gb"):
        assert isinstance(res[k], (int, float)) and res[k] >= 0, k
    assert res["params"] > 0 and res["tokens_per_s"] > 0 and res["ceiling_tokens_per_s"] > 0
