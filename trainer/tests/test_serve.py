"""Policy server (cm2_trainer.serve): real HTTP on 127.0.0.1, a tiny random Llama with the real SmolLM2 GGUF
tokenizer (skipped without CM2_GGUF; the first run converts and caches the tokenizer, about a minute)."""

from __future__ import annotations

import copy
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cm2_trainer.chat import TOOL_CHAT_TEMPLATE, parse_tool_calls
from cm2_trainer.policy import PolicyModel
from cm2_trainer.serve import POLICY_VERSION_HEADER, serve_in_thread

GGUF = os.environ.get("CM2_GGUF")
needs_gguf = pytest.mark.skipif(not GGUF or not Path(GGUF).is_file(), reason="CM2_GGUF is not set to a GGUF file")


# -- tool-call parsing (no model) -----------------------------------------------------------------------------
def test_parse_tool_calls_turns_blocks_into_openai_calls() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "parameters": {"tz": "CET"}}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["function"]["arguments"]) == {"tz": "CET"}
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


def test_parse_tool_calls_keeps_invalid_blocks_as_content() -> None:
    for text in [
        "no calls here",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>["get_weather"]</tool_call>',
    ]:
        content, calls = parse_tool_calls(text)
        assert calls == [] and content == text


def test_parse_tool_calls_accepts_a_final_block_cut_before_its_closing_tag() -> None:
    content, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert content == "" and calls[0]["function"] == {"name": "f", "arguments": '{"x": 1}'}


# -- server over HTTP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> Any:
    if not GGUF or not Path(GGUF).is_file():
        pytest.skip("CM2_GGUF is not set to a GGUF file")
    from cm2_trainer.models import load_tokenizer

    return load_tokenizer(GGUF)


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def make_adapter(base: Any, out: Path, seed: int) -> Path:
    """A LoRA adapter with large random weights (so greedy outputs change), saved like the trainer saves."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]
        ),
    )
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    pm.save_pretrained(str(out))
    return out


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/v1"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())

    def chat(self, **body: Any) -> tuple[int, dict[str, str], Any]:
        body.setdefault("model", "policy")
        body.setdefault("messages", [{"role": "user", "content": "Hello, who are you?"}])
        return self.call("POST", "/chat/completions", body)


@pytest.fixture()
def served(tokenizer: Any) -> Any:
    base = tiny_llama(len(tokenizer))
    pm = PolicyModel(base, tokenizer, version=0, name="tiny", max_queue=4)
    srv, _ = serve_in_thread(pm)
    try:
        yield pm, Client(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def greedy_ids(client: Client) -> tuple[list[int], str]:
    status, headers, r = client.chat(temperature=0, max_tokens=8, return_token_ids=True)
    assert status == 200, r
    return r["choices"][0]["token_ids"], headers[POLICY_VERSION_HEADER]


@needs_gguf
def test_serves_a_completion_over_http(served: Any) -> None:
    pm, client = served
    status, headers, r = client.chat(
        temperature=1.0,
        top_p=0.9,
        max_tokens=6,
        seed=7,
        return_token_ids=True,
        logprobs=True,
        return_tokens_as_token_ids=True,
    )
    assert status == 200, r
    assert headers[POLICY_VERSION_HEADER] == "0" and r["system_fingerprint"] == "0"
    choice = r["choices"][0]
    ids = choice["token_ids"]
    assert r["object"] == "chat.completion" and r["model"] == "tiny"
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert 1 <= len(ids) <= 6 and r["usage"]["completion_tokens"] == len(ids)
    prompt = pm.render([{"role": "user", "content": "Hello, who are you?"}], None)
    assert r["usage"]["prompt_tokens"] == len(prompt) and r["prompt_token_ids"] == prompt
    assert choice["finish_reason"] in ("stop", "length")
    assert [t["token"] for t in choice["logprobs"]["content"]] == [f"token_id:{t}" for t in ids]
    assert all(t["logprob"] <= 0 for t in choice["logprobs"]["content"])
    # Same seed, same sample.
    again = client.chat(temperature=1.0, top_p=0.9, max_tokens=6, seed=7, return_token_ids=True)[2]
    assert again["choices"][0]["token_ids"] == ids
    # Health, models, version.
    assert client.call("GET", "/policy_version")[2]["version"] == 0
    assert client.call("GET", "/models")[2]["data"][0]["id"] == "tiny"


@needs_gguf
def test_loading_an_adapter_changes_the_version_and_the_outputs(served: Any, tmp_path: Path) -> None:
    pm, client = served
    before, v0 = greedy_ids(client)
    assert v0 == "0"
    adapter = make_adapter(pm.base, tmp_path / "a1", seed=1)
    status, headers, st = client.call(
        "POST", "/load_lora_adapter", {"lora_name": "run-v1", "lora_path": str(adapter), "version": 1}
    )
    assert status == 200, st
    assert st["version"] == 1 and st["lora_name"] == "run-v1" and headers[POLICY_VERSION_HEADER] == "1"
    assert client.call("GET", "/policy_version")[2]["version"] == 1
    after, v1 = greedy_ids(client)
    assert v1 == "1" and after != before
    # Unloading serves the base model again, with its outputs.
    st = client.call("POST", "/unload_lora_adapter", {})[2]
    assert st["version"] == 0
    assert greedy_ids(client) == (before, "0")


@needs_gguf
def test_loads_an_adapter_from_a_checkpoint_ref_in_the_store(served: Any, tmp_path: Path) -> None:
    from cm2_trainer.store import FsStore

    pm, client = served
    adapter = make_adapter(pm.base, tmp_path / "a2", seed=2)
    direct = client.call("POST", "/load_lora_adapter", {"lora_name": "d", "lora_path": str(adapter), "version": 5})
    assert direct[0] == 200
    via_path, _ = greedy_ids(client)
    store = FsStore(tmp_path / "store")
    files = {f.name: store.put_file(f).to_json() for f in adapter.iterdir() if f.is_file()}
    ref = store.put_json({"schema": "cm2.checkpoint/v1", "files": files})
    status, headers, st = client.call(
        "POST",
        "/load_lora_adapter",
        {"lora_name": "run-v2", "checkpoint": ref.to_json(), "store_url": store.url, "version": 2},
    )
    assert status == 200, st
    assert st["version"] == 2 and headers[POLICY_VERSION_HEADER] == "2"
    assert greedy_ids(client) == (via_path, "2")  # same adapter files, same outputs
    # A ref to nothing is a 400 and leaves the live adapter alone.
    bad = dict(ref.to_json(), sha256="0" * 64, uri="cm2://sha256/" + "0" * 64)
    status, _, err = client.call(
        "POST",
        "/load_lora_adapter",
        {"lora_name": "x", "checkpoint": bad, "store_url": store.url, "version": 3},
    )
    assert status == 400 and "not in the store" in err["error"]["message"]
    assert client.call("GET", "/policy_version")[2]["version"] == 2


@needs_gguf
def test_tool_calls_in_the_output_become_openai_tool_calls(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pm, client = served
    assert pm.chat_template == TOOL_CHAT_TEMPLATE  # SmolLM2's own template ignores tools
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    ids = pm.tokenizer.encode(text, add_special_tokens=False) + [pm.eot_ids[0]]
    seen: dict[str, Any] = {}

    def fake_generate(prompt_ids: list[int], s: Any, want_logprobs: bool = False, **_: Any) -> dict[str, Any]:
        seen["prompt"] = pm.tokenizer.decode(prompt_ids)
        return {"token_ids": ids, "logprobs": None, "version": pm.version, "max_new": 64, "seconds": 0.1}

    monkeypatch.setattr(pm, "generate", fake_generate)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    status, _, r = client.chat(tools=tools, return_token_ids=True)
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert choice["token_ids"] == ids
    assert '"name": "get_weather"' in seen["prompt"] and "<tools>" in seen["prompt"]


@needs_gguf
def test_bad_requests_are_400_with_the_field_named(served: Any) -> None:
    _, client = served
    status, _, r = client.chat(temperature=5)
    assert status == 400 and r["error"]["param"] == "temperature"
    status, _, r = client.chat(messages=[{"role": "wizard", "content": "hi"}])
    assert status == 400 and "messages[0].role" in r["error"]["message"]
    status, _, r = client.chat(messages=[{"role": "user", "content": "word " * 600}])
    assert status == 400 and r["error"]["code"] == "context_length_exceeded"
    status, _, r = client.call("POST", "/load_lora_adapter", {"lora_name": "x", "lora_path": "/nonexistent"})
    assert status == 400 and "adapter_config.json" in r["error"]["message"]
    ref = {"uri": "cm2://sha256/" + "0" * 64, "sha256": "0" * 64, "bytes": 1}
    status, _, r = client.call("POST", "/load_lora_adapter", {"lora_name": "x", "checkpoint": ref})
    assert status == 400 and r["error"]["param"] == "store_url"  # no store_url and no --store
    status, _, r = client.call(
        "POST", "/load_lora_adapter", {"lora_name": "x", "checkpoint": ref, "store_url": "ftp://host/store"}
    )
    assert status == 400 and r["error"]["param"] == "store_url" and "ftp://host/store" in r["error"]["message"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CM2_RUN_SLOW") != "1", reason="CM2_RUN_SLOW=1 runs the real-model test")
@needs_gguf
def test_real_smollm2_answers(tokenizer: Any) -> None:
    from cm2_trainer.models import load_base_model

    pm = PolicyModel(load_base_model(GGUF), tokenizer, version=0, name="smollm2")
    srv, _ = serve_in_thread(pm)
    try:
        status, _, r = Client(srv.server_address[1]).chat(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            temperature=0,
            max_tokens=16,
        )
        assert status == 200 and "Paris" in r["choices"][0]["message"]["content"]
    finally:
        srv.shutdown()
        srv.server_close()
