"""Token fidelity: turn one stored sample into input_ids, a loss mask and per-token advantages.

The policy gradient is only right if we score the tokens the policy actually produced, in the context it
actually saw. Two sources, per assistant message:

1. `completions[].tokenIds` (what the serving stack returned for that message): used **verbatim**. This is
   the faithful path; it is the only correct one when the server's rendering of an assistant message
   differs from the tokenizer's chat template (tool-call formats, templates that cannot render tool calls
   at all, such as SmolLM2's).
2. Otherwise the tokenizer's chat template (with the sample's `tools` passed to `apply_chat_template`):
   `prefix_i = template(messages[:i], add_generation_prompt=True)` and
   `full_i = template(messages[:i+1])`; the message's tokens are `full_i` minus `prefix_i`.

Everything that is not an assistant message (system, tools, user, tool results, generation prompts) comes
from the template: the context between two assistant messages is `prefix_k` minus `full_j`. The template
must therefore be *prefix-stable* (`full_j` a prefix of `prefix_k`, `prefix_i` a prefix of `full_i`, in
token space). Templates that rewrite earlier turns (e.g. Qwen3 dropping old `<think>` blocks) are not,
and raise `TemplateError` naming the sample and the message instead of training on tokens the model never
saw in that position. Earlier assistant messages with verbatim ids stay verbatim in the context of later
ones (one sequence per sample; a server that re-tokenises them would differ only where re-tokenisation
differs).

Loss mask: 1 on the tokens of each assistant message that has an advantage, up to and including its
end-of-turn token (e.g. `<|im_end|>`); 0 elsewhere, including template glue after the end-of-turn token
(ChatML's trailing newline), which the model never samples (verl's multi-turn mask includes it; we do not).
If verbatim ids do not end with an end-of-turn token (generation cut by a length limit), the end-of-turn
token and the glue are context (mask 0): we do not teach the policy to stop where it was cut.
The message's advantage is put on all of its loss tokens. Assistant messages without an advantage are
context. The sequence is cut after the last loss token (later tokens cannot affect the loss).

Messages are normalised exactly as the policy server (serve.py) normalises them before templating:
tool-call arguments (JSON strings on the wire) are parsed to objects, as vLLM does too, since HF
templates expect a mapping; `content: null` becomes "". The caller passes the serving template
(`serve.serving_chat_template`: the tokenizer's own, or cm2's tool-aware ChatML for templates that ignore
tools, like SmolLM2's) so that training renders what the policy server rendered.
If the template renders an assistant message without the names of its tool calls, the tool calls would be
silently lost: that raises `TemplateError` unless the message has verbatim ids.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from typing import Any

from .contract import Sample

# Special tokens that end an assistant turn in common templates (used besides tokenizer.eos_token_id).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class TemplateError(ValueError):
    """The chat template cannot reproduce the sample's tokens faithfully."""


@dataclass
class RenderedSample:
    episode_id: str
    input_ids: list[int]
    loss_mask: list[int]
    advantages: list[float]
    rollout_logprobs: list[float | None]  # serving stack's log-prob per token where known, else None
    # per token: index in the sample's messages of the assistant message it renders, -1 for context and glue
    # (None: not known, for samples built by hand)
    message_index: list[int] | None = None

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for t in END_OF_TURN_TOKENS:
        if t in vocab:
            ids.add(int(vocab[t]))
    return ids


def template_tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """One tool call in the shape chat templates expect, the one definition for the trainer and the policy
    server: id (``call_<index>`` when missing), type function, and ``arguments`` parsed to an object when they
    are a JSON-object string (any other string is kept as it is: the template renders it verbatim)."""
    fn = call["function"]
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            args = parsed
    return {
        "id": call.get("id") or f"call_{index}",
        "type": "function",
        "function": {"name": fn["name"], "arguments": copy.deepcopy(args)},
    }


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the messages in the shape chat templates expect, exactly as the policy server
    (`chat.normalize_messages`) passes them: role, content ("" for null), tool_calls with `arguments`
    parsed to an object when it is a JSON object, tool_call_id. Other keys are dropped, as there."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        calls = m.get("tool_calls")
        if m["role"] == "assistant" and calls:
            msg["tool_calls"] = [template_tool_call(c, k) for k, c in enumerate(calls)]
        if m["role"] == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = str(m["tool_call_id"])
        out.append(msg)
    return out


def render_sample(
    sample: Sample, tokenizer: Any, *, chat_template: str | None = None, vocab_size: int | None = None
) -> RenderedSample:
    msgs = template_messages(sample.messages)
    tools = sample.tools or None
    eot = end_of_turn_ids(tokenizer)
    who = f"sample {sample.episode_id!r}"

    def encode(upto: int, gen: bool) -> list[int]:
        try:
            out = tokenizer.apply_chat_template(
                msgs[:upto],
                tools=tools,
                tokenize=True,
                add_generation_prompt=gen,
                chat_template=chat_template,
                return_dict=False,
            )
        except Exception as e:  # jinja errors, missing fields
            raise TemplateError(f"Chat template failed on {who} messages[:{upto}]: {type(e).__name__}: {e}") from e
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    if not sample.advantages:  # nothing to train: an empty sample (dropped by the caller)
        return RenderedSample(sample.episode_id, [], [], [], [], [])
    last = max(sample.advantages)
    ids: list[int] = []
    mask: list[int] = []
    adv: list[float] = []
    rlp: list[float | None] = []
    msg: list[int] = []

    def push(tokens: list[int], m: int, a: float, lps: list[float] | None = None, owner: int = -1) -> None:
        ids.extend(tokens)
        mask.extend([m] * len(tokens))
        adv.extend([a if m else 0.0] * len(tokens))
        rlp.extend(lps if lps is not None else [None] * len(tokens))
        msg.extend([owner] * len(tokens))

    prev_full: list[int] = []
    for i in range(last + 1):
        if msgs[i]["role"] != "assistant":
            continue
        prefix = encode(i, gen=True)
        full = encode(i + 1, gen=False)
        if prefix[: len(prev_full)] != prev_full:
            raise TemplateError(
                f"Chat template is not prefix-stable for {who}: the prompt before messages[{i}] does not start "
                f"with the rendering of messages[:{_last_assistant_before(msgs, i) + 1}]; earlier turns are "
                f"rendered differently once later messages exist"
            )
        if full[: len(prefix)] != prefix:
            raise TemplateError(
                f"Chat template is not prefix-stable for {who} messages[{i}]: rendering messages[:{i + 1}] does "
                f"not start with the generation prompt for messages[:{i}]"
            )
        push(prefix[len(prev_full) :], 0, 0.0)  # context since the previous assistant message
        segment = full[len(prefix) :]
        cut = max((k for k, t in enumerate(segment) if t in eot), default=len(segment) - 1)
        body, glue = segment[: cut + 1], segment[cut + 1 :]
        trained = i in sample.advantages
        a = sample.advantages.get(i, 0.0)
        completion = sample.completions.get(i)
        if completion is not None:
            tokens = completion.token_ids
            if vocab_size is not None and max(tokens) >= vocab_size:
                raise TemplateError(
                    f"{who} completions for messages[{i}] hold token id {max(tokens)}, but the model's "
                    f"vocabulary has {vocab_size}"
                )
            push(tokens, int(trained), a, completion.logprobs, i)
            if tokens[-1] not in eot and body and body[-1] in eot:
                push(body[-1:], 0, 0.0, owner=i)  # cut by a length limit: end-of-turn is context, not a target
            push(glue, 0, 0.0)
        else:
            _check_tool_calls_rendered(sample.messages[i], text(segment), who, i)
            push(body, int(trained), a, owner=i)
            push(glue, 0, 0.0)
        prev_full = full

    if tools:  # cheap check, on the last prompt only
        no_tools = _encode_without_tools(tokenizer, msgs, last, chat_template)
        if no_tools is not None and no_tools == encode(last, gen=True):
            warnings.warn(
                f"Chat template ignores `tools` ({who}): the training context has no tool descriptions; "
                "if the serving stack injected them, its prompt differs from this one",
                TemplateToolsIgnored,
                stacklevel=2,
            )

    end = max(k for k, m in enumerate(mask) if m) + 1 if any(mask) else len(ids)
    return RenderedSample(sample.episode_id, ids[:end], mask[:end], adv[:end], rlp[:end], msg[:end])


class TemplateToolsIgnored(UserWarning):
    pass


def _encode_without_tools(
    tokenizer: Any, msgs: list[dict[str, Any]], upto: int, chat_template: str | None
) -> list[int] | None:
    try:
        out = tokenizer.apply_chat_template(
            msgs[:upto], tokenize=True, add_generation_prompt=True, chat_template=chat_template, return_dict=False
        )
    except Exception:
        return None
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(t) for t in out]


def _last_assistant_before(msgs: list[dict[str, Any]], i: int) -> int:
    for j in range(i - 1, -1, -1):
        if msgs[j]["role"] == "assistant":
            return j
    return -1


def _check_tool_calls_rendered(message: dict[str, Any], rendered: str, who: str, i: int) -> None:
    for c in message.get("tool_calls") or []:
        name = c["function"]["name"]
        if name not in rendered:
            raise TemplateError(
                f"Chat template drops the tool call {name!r} of {who} messages[{i}]; send the serving "
                f"stack's token ids for this message in completions[], or use a template that renders tool calls"
            )
