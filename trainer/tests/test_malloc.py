"""The CPU trainer's glibc tuning (worker.tune_malloc) hands freed activation-sized blocks back to the OS."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from cm2_trainer.worker import tune_malloc
    if sys.argv[1] == "tuned":
        assert tune_malloc()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    def touch(p, n):
        ctypes.memset(p, 1, n)
    big = libc.malloc(16 << 20); touch(big, 16 << 20); libc.free(big)   # raises glibc's dynamic threshold
    blocks, kept = [], []
    for _ in range(100):                                                # 400 MiB of "activations", each
        blocks.append(libc.malloc(4 << 20)); touch(blocks[-1], 4 << 20)  # followed by a small long-lived object
        kept.append(libc.malloc(128 << 10)); touch(kept[-1], 128 << 10)  # (128 KiB: not from a free slot)
    before = rss_mib()
    for b in blocks:
        libc.free(b)
    print(before - rss_mib())                                            # MiB handed back
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_returns_freed_blocks(tmp_path):
    import cm2_trainer

    root = str(Path(cm2_trainer.__file__).parent.parent)
    script = tmp_path / "m.py"
    script.write_text(SCRIPT.format(root=root))

    def released(mode: str) -> float:
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.strip())

    assert released("tuned") > 350  # all 400 MiB go back (mmap'd blocks are unmapped on free)
    assert released("default") < 350  # glibc's default keeps most of them on the heap
