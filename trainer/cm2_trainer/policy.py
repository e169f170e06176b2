"""The live policy: an engine, the adapter version it serves, and the OpenAI front end (render, generate,
parse tool calls), with adapter swaps that no completion straddles."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .chat import (
    BadRequest,
    Sampling,
    normalize_messages,
    normalize_tools,
    parse_sampling,
    parse_tool_calls,
    serving_chat_template,
)
from .engines import QueueFull, TorchEngine, _SwapLock
from .models import materialize_checkpoint

log = logging.getLogger("cm2_trainer.policy")


def version_str(v: Any) -> str:
    return str(v)


class PolicyModel:
    """The live policy: an engine (the base model), the adapter version it serves, and the OpenAI front end.
    All generation goes through :meth:`generate`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        version: Any = 0,
        name: str = "policy",
        max_context: int | None = None,
        max_queue: int = 16,
        chat_template: str | None = None,
        engine: Any = None,
    ) -> None:
        from .render import end_of_turn_ids

        self.tokenizer = tokenizer
        self.name = name
        self.chat_template = chat_template if chat_template is not None else serving_chat_template(tokenizer)
        self.base_version = version
        self.version: Any = version
        self.lora_name: str | None = None
        self.loaded_at = time.time()
        self.eot_ids = sorted(end_of_turn_ids(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_ids[0]
        self.engine = engine if engine is not None else TorchEngine(model, tokenizer, self.eot_ids, self.pad_id)
        self.engine.eot_ids = self.eot_ids
        self.max_context = max_context or self.engine.max_context
        self._swap = _SwapLock()  # generations (shared) and adapter swaps (exclusive)
        self._admin = threading.Lock()  # one adapter load at a time
        self._slots = threading.BoundedSemaphore(self.engine.concurrency + max_queue)

    @property
    def base(self) -> Any:
        """The in-process base model (TorchEngine only)."""
        return self.engine.base

    # -- adapters ---------------------------------------------------------------------------------------------
    def load_adapter(
        self,
        lora_name: str,
        version: Any,
        *,
        lora_path: str | None = None,
        checkpoint: Any = None,
        store_url: str | None = None,
    ) -> dict[str, Any]:
        """Stage an adapter (outside the swap lock), then make it live atomically."""
        from peft import PeftConfig

        with self._admin:
            staging = Path(tempfile.mkdtemp(prefix="cm2-adapter-"))
            try:
                if lora_path is not None:
                    src = Path(lora_path)
                    if not (src / "adapter_config.json").is_file():
                        raise BadRequest(f"lora_path {lora_path!r} has no adapter_config.json", "lora_path")
                    for f in src.iterdir():
                        if f.is_file():
                            shutil.copy2(f, staging / f.name)
                else:
                    if store_url is None:
                        raise BadRequest("checkpoint needs store_url (or start the server with --store)", "store_url")
                    materialize_checkpoint(store_url, checkpoint, staging)
                try:
                    PeftConfig.from_pretrained(str(staging))
                except Exception as e:
                    raise BadRequest(f"Adapter {lora_name!r} has an unreadable adapter_config.json: {e}") from None
                self._swap.acquire_exclusive()
                try:
                    self.engine.activate(staging, lora_name)
                    self.lora_name = lora_name
                    self.version = version
                    self.loaded_at = time.time()
                    return self.status()
                finally:
                    self._swap.release_exclusive()
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def unload_adapter(self, version: Any = None) -> dict[str, Any]:
        """Serve the base model again."""
        with self._admin:
            self._swap.acquire_exclusive()
            try:
                self.engine.deactivate()
                self.lora_name = None
                self.version = self.base_version if version is None else version
                self.loaded_at = time.time()
                return self.status()
            finally:
                self._swap.release_exclusive()

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "lora_name": self.lora_name, "loaded_at": self.loaded_at}

    # -- generation -------------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        try:
            out = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=True,
                add_generation_prompt=True,
                chat_template=self.chat_template,
                return_dict=False,
            )
        except Exception as e:
            raise BadRequest(f"Chat template failed: {type(e).__name__}: {e}", "messages") from None
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def generate(
        self, prompt_ids: list[int], s: Sampling, want_logprobs: bool = False, coalesce: bool = False
    ) -> dict[str, Any]:
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise BadRequest(
                f"Prompt has {len(prompt_ids)} tokens, the context is {self.max_context} tokens",
                "messages",
                "context_length_exceeded",
            )
        max_new = room if s.max_tokens is None else min(s.max_tokens, room)
        if not self._slots.acquire(blocking=False):
            raise QueueFull("The generation queue is full")
        try:
            self._swap.acquire_shared()
            try:
                version = self.version
                g = self.engine.generate(prompt_ids, s, max_new, want_logprobs, coalesce)
            finally:
                self._swap.release_shared()
        finally:
            self._slots.release()
        return {
            "token_ids": g.token_ids,
            "logprobs": g.logprobs,
            "version": version,
            "max_new": max_new,
            "seconds": g.seconds,
        }

    def complete(self, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """One chat completion; returns the response object and the version that produced it."""
        messages = normalize_messages(body.get("messages"))
        tools = normalize_tools(body.get("tools"))
        if body.get("tool_choice") == "none":
            tools = None
        s = parse_sampling(body)
        prompt_ids = self.render(messages, tools)
        want_lp = bool(body.get("logprobs"))
        # The first step of an episode (no assistant message yet) is the same request for every rollout of a
        # group: the engine may serve them together.
        first_step = not any(m["role"] == "assistant" for m in messages)
        g = self.generate(prompt_ids, s, want_logprobs=want_lp, coalesce=first_step)
        ids: list[int] = g["token_ids"]
        ended = bool(ids) and ids[-1] in self.eot_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped_by_string = False
        for stop in s.stop:
            k = text.find(stop)
            if k >= 0:
                text, stopped_by_string = text[:k], True
        content, calls = parse_tool_calls(text) if tools else (text, [])
        if calls:
            finish = "tool_calls"
        elif ended or stopped_by_string or len(ids) < g["max_new"]:
            finish = "stop"
        else:
            finish = "length"
        message: dict[str, Any] = {"role": "assistant", "content": (content if content or not calls else None)}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
        if g["logprobs"] is not None:
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choice["logprobs"] = {
                "content": [
                    {
                        "token": f"token_id:{t}" if as_ids else self.tokenizer.decode([t]),
                        "logprob": lp,
                        "bytes": None,
                        "top_logprobs": [],
                    }
                    for t, lp in zip(ids, g["logprobs"], strict=False)
                ]
            }
        version = g["version"]
        resp = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": version_str(version),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt_ids) + len(ids),
            },
        }
        if body.get("return_token_ids"):
            resp["prompt_token_ids"] = prompt_ids
        log.info(
            json.dumps(
                {
                    "id": resp["id"],
                    "version": version_str(version),
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": len(ids),
                    "finish_reason": finish,
                    "tok_per_s": round(len(ids) / g["seconds"], 1) if g["seconds"] > 0 else None,
                }
            )
        )
        return resp, version


# -- HTTP -----------------------------------------------------------------------------------------------------
