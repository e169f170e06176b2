from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# 2 shared CPU cores: OpenMP spinning across busy cores makes tiny ops 20-40x slower; one thread is steady.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "tests" / "contracts"


def gguf_path() -> Path | None:
    p = os.environ.get("CM2_GGUF") or str(REPO / ".cm2" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return Path(p) if Path(p).is_file() else None


@pytest.fixture(scope="session")
def tok():
    from helpers import hermetic_tokenizer

    return hermetic_tokenizer()


@pytest.fixture(scope="session")
def gguf_tok():
    p = gguf_path()
    if p is None:
        pytest.skip(
            "SmolLM2 GGUF not found: set CM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (or put it at .cm2/models/)"
        )
    from cm2_trainer.models import load_tokenizer

    return load_tokenizer(str(p))  # the policy server's loader: converts once, then reads a disk cache


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tok) -> Path:
    """A tiny random Llama + the hermetic tokenizer saved as an HF directory (base kind 'hf')."""
    from helpers import tiny_llama

    d = tmp_path_factory.mktemp("tiny-base")
    tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def real_tok_base_dir(tmp_path_factory, gguf_tok) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer of the embedded model (base kind 'hf')."""
    from helpers import tiny_llama

    d = tmp_path_factory.mktemp("tiny-base-smollm2-tok")
    tiny_llama(len(gguf_tok)).save_pretrained(d)
    gguf_tok.save_pretrained(d)
    return d


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CM2_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set CM2_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
