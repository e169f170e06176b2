"""The policy server's chat format and request shapes: the tool-aware ChatML template and how a tokenizer's
template is chosen, ``<tool_call>`` parsing, and validation of OpenAI messages, tools and sampling fields
(``BadRequest`` names the field and the value; the HTTP layer maps it to 400)."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from .render import template_tool_call

log = logging.getLogger("cm2_trainer.chat")


# ChatML with tools. Without tools it renders exactly like SmolLM2-Instruct's own template (default system
# message included); with tools it appends the tool block to the system message, renders assistant tool
# calls as <tool_call> blocks and tool results as `tool` turns. Prefix-stable: no message is rendered
# differently because of later ones.
TOOL_CHAT_TEMPLATE = (
    "{%- set ns = namespace(sys=none, start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.sys = messages[0]['content'] -%}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{{- ns.sys if ns.sys is not none else 'You are a helpful assistant.' -}}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " ~ 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' ~ (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    " ~ '<tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' ~ \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' -}}'
    "{%- elif ns.sys is not none -%}"
    "{{- '<|im_start|>system\\n' ~ ns.sys ~ '<|im_end|>\\n' -}}"
    "{%- elif messages -%}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ (message['content'] or '') -}}"
    "{%- if message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call.get('function') else call -%}"
    "{{- ('\\n' if (message['content'] or not loop.first) else '') ~ '<tool_call>\\n' -}}"
    "{{- {'name': fn['name'], 'arguments': fn['arguments']} | tojson -}}"
    "{{- '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "cm2_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}},
}


def serving_chat_template(tokenizer: Any) -> str | None:
    """The chat template the policy server renders with: None (the tokenizer's own) when that one renders
    ``tools``, else :data:`TOOL_CHAT_TEMPLATE`. The trainer passes the same value to ``render_sample``."""
    msgs = [{"role": "user", "content": "hi"}]
    try:
        with_tools = tokenizer.apply_chat_template(
            msgs, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
        without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # no template, or one that rejects tools
        return TOOL_CHAT_TEMPLATE
    return TOOL_CHAT_TEMPLATE if "cm2_probe_tool" not in with_tools or with_tools == without else None


# -- tool-call parsing ----------------------------------------------------------------------------------------
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split model text into content and OpenAI tool calls.

    Each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block whose JSON parses and has a string
    ``name`` becomes a call (``arguments`` re-serialised as a JSON string, ``parameters`` accepted as an
    alias); a final block cut before its closing tag counts if its JSON is complete. Other blocks stay in the
    content. With calls, the content is what remains, stripped.
    """
    calls: list[dict[str, Any]] = []

    def repl(m: re.Match[str]) -> str:
        try:
            obj = json.loads(m.group(1))
        except json.JSONDecodeError:
            return m.group(0)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return m.group(0)
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
        return ""

    content = _TOOL_CALL_RE.sub(repl, text)
    return (content.strip() if calls else content), calls


# -- request validation ---------------------------------------------------------------------------------------
class BadRequest(ValueError):
    """Maps to HTTP 400; the message names the field and the value."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int | None
    seed: int | None
    stop: list[str]


def _num(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{key} is {v!r}, expected a number in [{lo}, {hi}]", key)
    return float(v)


def _opt_int(body: dict[str, Any], key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise BadRequest(f"{key} is {v!r}, expected an integer{f' >= {lo}' if lo is not None else ''}", key)
    return v


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """OpenAI sampling fields (plus vLLM's ``top_k``); defaults are OpenAI's (temperature 1, top_p 1)."""
    if body.get("n") not in (None, 1):
        raise BadRequest(f"n is {body.get('n')!r}, only 1 is supported", "n")
    if body.get("stream"):
        raise BadRequest("stream is not supported", "stream")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 16:
        stops = list(stop)
    else:
        raise BadRequest(f"stop is {stop!r}, expected a string or a list of up to 16 non-empty strings", "stop")
    top_k = _opt_int(body, "top_k", -1)
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1)
    top_p = _num(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise BadRequest("top_p is 0, expected a number in (0, 1]", "top_p")
    return Sampling(
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        top_k=0 if top_k is None or top_k < 0 else top_k,
        max_tokens=max_tokens,
        seed=_opt_int(body, "seed"),
        stop=stops,
    )


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Check OpenAI messages and return copies in the shape chat templates expect (text parts joined,
    ``content: null`` -> "", tool-call arguments parsed to objects where they are JSON objects)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(messages):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{w} is {type(m).__name__}, expected an object", w)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"{w}.role is {role!r}, expected system, user, assistant or tool", f"{w}.role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise BadRequest(f"{w}.content[{j}] is not a text part; only text is supported", f"{w}.content")
                parts.append(p["text"])
            content = "".join(parts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise BadRequest(f"{w}.content is {type(content).__name__}, expected a string", f"{w}.content")
        msg: dict[str, Any] = {"role": role, "content": content}
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list):
                raise BadRequest(f"{w}.tool_calls is not an array", f"{w}.tool_calls")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRequest(f"{w}.tool_calls[{j}].function.name is missing", f"{w}.tool_calls")
            msg["tool_calls"] = [template_tool_call(c, j) for j, c in enumerate(calls)]
        if role == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = str(m["tool_call_id"])
        out.append(msg)
    return out


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", "tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if (
            not isinstance(t, dict)
            or t.get("type") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise BadRequest(f"tools[{i}] is not a function tool with a name", f"tools[{i}]")
    return copy.deepcopy(tools)
