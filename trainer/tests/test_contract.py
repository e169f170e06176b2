import copy
import hashlib
import json

import pytest
from conftest import CONTRACTS

from cm2_trainer.contract import (
    ContractError,
    decode_batch,
    decode_manifest,
    decode_result,
    decode_update_request,
)
from cm2_trainer.render import render_sample


def _load(name):
    return json.loads((CONTRACTS / name).read_text())


def test_fixtures_decode():
    req = decode_update_request(_load("update_request.json"))
    batch = decode_batch(_load("batch.json"))
    res = decode_result(_load("update_result.json"))
    man = decode_manifest(_load("checkpoint_manifest.json"))
    raw = (CONTRACTS / "batch.json").read_bytes()
    assert (req.batch.sha256, req.batch.bytes) == (hashlib.sha256(raw).hexdigest(), len(raw))
    assert (batch.run_id, batch.iteration) == (req.run_id, req.iteration) == (res["runId"], res["iteration"])
    assert res["version"] == man["version"] == req.iteration + 1
    assert req.parent is not None and man["parent"] == req.parent.to_json()
    assert man["metrics"] == res["metrics"]
    assert len(batch.samples) == 2 and any(m.get("tool_calls") for s in batch.samples for m in s.messages)
    assert req.config().kl_coef == 1e-4 and req.config().lr == 1e-6
    assert req.init is None  # optional: requests written before RL could start from SFT have no `init`


def test_init_on_the_update_request_is_an_optional_ref():
    ref = {"uri": "cm2://sha256/" + "b" * 64, "sha256": "b" * 64, "bytes": 3}
    assert decode_update_request({**_load("update_request.json"), "init": ref}).init.to_json() == ref
    assert decode_update_request({**_load("update_request.json"), "init": None}).init is None


def test_tokens_on_the_checkpoint_manifest_is_an_optional_ref():
    ref = {"uri": "cm2://sha256/" + "c" * 64, "sha256": "c" * 64, "bytes": 3}
    man = _load("checkpoint_manifest.json")
    assert "tokens" not in man and decode_manifest(man)  # written before the per-token record existed
    assert decode_manifest({**man, "tokens": ref})["tokens"] == ref
    assert decode_manifest({**man, "tokens": None})["tokens"] is None
    with pytest.raises(ContractError, match="checkpoint.tokens"):
        decode_manifest({**man, "tokens": {"uri": "nope"}})


def test_batch_fixture_renders_with_the_smollm2_tokenizer(gguf_tok):
    import warnings

    batch = decode_batch(_load("batch.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rendered = [render_sample(s, gguf_tok, vocab_size=49152) for s in batch.samples]
    assert all(r.num_loss_tokens > 0 for r in rendered)
    assert gguf_tok.decode(batch.samples[0].completions[2].token_ids).startswith("<tool_call>")


def _mutate(obj, path, value):
    obj = copy.deepcopy(obj)
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    if value is KeyError:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("runId",), "../x", "request.runId is '../x'"),
        (("iteration",), -1, "request.iteration is -1"),
        (("iteration",), True, "request.iteration is True"),
        (("base", "kind"), "onnx", "request.base.kind is 'onnx'"),
        (("batch", "sha256"), "X" * 64, "request.batch.sha256"),
        (("trainer", "lr"), float("nan"), "request.trainer.lr is nan"),
        (("trainer", "lr"), 0, "lr is 0"),
        (("trainer", "miniBatches"), 1.5, "request.trainer.miniBatches is 1.5"),
        (("trainer", "clipRatioC"), 1.0, "clip_ratio_c is 1.0"),
        (("trainer", "entropyCoef"), 0.0, "unknown fields ['entropyCoef']"),
        (("storeUrl",), KeyError, "missing ['storeUrl']"),
        (("extra",), 1, "unknown fields ['extra']"),
        (("init",), {"uri": "x"}, "request.init.sha256 is None"),
    ],
)
def test_bad_requests_name_the_field_and_value(path, value, message):
    with pytest.raises(ContractError, match=__import__("re").escape(message)):
        decode_update_request(_mutate(_load("update_request.json"), path, value))


S = ("samples", 0)


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("schema",), "cm2.batch/v2", "batch.schema is 'cm2.batch/v2'"),
        (("samples",), [], "batch.samples is empty"),
        (S + ("advantages", 0, "messageIndex"), 1, "batch.samples[0].advantages[0].messageIndex is 1 (user)"),
        (S + ("advantages", 0, "messageIndex"), 9, "messageIndex is 9 (out of range)"),
        (S + ("advantages", 0, "advantage"), "0.5", "batch.samples[0].advantages[0].advantage is '0.5'"),
        (S + ("completions", 0, "tokenIds", 3), -4, "batch.samples[0].completions[0].tokenIds[3] is -4"),
        (S + ("completions", 0, "logprobs"), [0.0], "logprobs has 1 values for"),
        (S + ("messages", 1, "role"), "developer", "batch.samples[0].messages[1].role is 'developer'"),
        (
            S + ("messages", 2, "tool_calls", 0, "function", "arguments"),
            {"city": "Paris"},
            "batch.samples[0].messages[2].tool_calls[0].function.arguments is {'city': 'Paris'}",
        ),
        (S + ("messages", 3, "tool_call_id"), KeyError, "batch.samples[0].messages[3].tool_call_id is None"),
        (S + ("tools", 0, "type"), "retrieval", "batch.samples[0].tools[0].type is 'retrieval'"),
        (S + ("groupId",), KeyError, "batch.samples[0] is missing ['groupId']"),
    ],
)
def test_bad_batches_name_the_field_and_value(path, value, message):
    with pytest.raises(ContractError, match=__import__("re").escape(message)):
        decode_batch(_mutate(_load("batch.json"), path, value))


def test_result_version_must_follow_iteration():
    with pytest.raises(ContractError, match="version is 5, expected iteration \\+ 1 = 2"):
        decode_result(_mutate(_load("update_result.json"), ("version",), 5))


def test_wire_names_come_from_the_list_the_typescript_side_reads() -> None:
    import json
    from pathlib import Path

    from cm2_trainer import contract
    from cm2_trainer.update import checkpoint_name

    shared = json.loads((Path(__file__).resolve().parents[2] / "core" / "wire_names.json").read_text())
    assert contract.TASK_QUEUE == shared["taskQueues"]["trainer"] == "cm2-trainer"
    assert contract.ACTIVITY_NAME == shared["activities"]["updatePolicy"] == "updatePolicy"
    assert checkpoint_name("r1", 3) == "runs/r1/checkpoints/it-3"  # the format stored runs already use


def test_trainer_defaults_match_the_typescript_config_through_the_shared_fixture() -> None:
    """tests/contracts/trainer_defaults.json holds the config's defaults (tests/unit/contracts_test.ts pins the
    TypeScript side to it): the worker's own defaults, used when it runs without a request, are the same."""
    from cm2_trainer.config import WIRE_FIELDS, TrainerConfig

    defaults = json.loads((CONTRACTS / "trainer_defaults.json").read_text())
    cfg = TrainerConfig()
    assert set(defaults) == set(WIRE_FIELDS) - {"seed"}
    assert {k: getattr(cfg, WIRE_FIELDS[k]) for k in defaults} == defaults


def test_sft_defaults_match_the_typescript_config_through_the_shared_fixture() -> None:
    """tests/contracts/sft_defaults.json holds SftConfig's defaults, every wire field (the TypeScript run config's
    `sft` defaults are pinned to the same file)."""
    from cm2_trainer.config import SFT_WIRE_FIELDS, SftConfig

    defaults = json.loads((CONTRACTS / "sft_defaults.json").read_text())
    assert set(defaults) == set(SFT_WIRE_FIELDS)
    assert SftConfig().to_json() == defaults
