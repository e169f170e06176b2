"""Generation engines of the policy server: transformers in this process (any HF model, one request at a
time) and llama.cpp's ``llama-server`` as a child fed token ids (GGUF base, LoRA converted by
``lora_gguf.py``, several requests batched). Both take rendered prompt ids and return the sampled ids with
their log-probs."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat import BadRequest, Sampling

log = logging.getLogger("cm2_trainer.engines")


class QueueFull(Exception):
    pass


class EngineError(RuntimeError):
    """The generation engine failed (maps to HTTP 500 with the reason)."""


class _SwapLock:
    """Many generations at once, or one adapter swap alone; a waiting swap holds back new generations, so a
    publish is never starved by a steady stream of rollouts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_shared(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float] | None
    seconds: float


class TorchEngine:
    """transformers + peft in this process: any HF causal LM, one generation at a time. The path for a GPU host
    without vLLM/SGLang, and the fallback when llama.cpp's server is not built."""

    name = "transformers"
    concurrency = 1

    def __init__(self, model: Any, tokenizer: Any, eot_ids: list[int], pad_id: int) -> None:
        self.base = model
        self.peft: Any = None  # PeftModel once an adapter was loaded
        self.tokenizer = tokenizer
        self.eot_ids = eot_ids
        self.pad_id = pad_id
        self._adapter: str | None = None  # internal peft adapter name of the newest adapter
        self._live = False  # whether generation uses it (False: the base model)
        self._counter = 0
        self._lock = threading.Lock()
        cfg = getattr(model, "config", None)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 4096)

    def activate(self, staging: Path, lora_name: str) -> None:
        from peft import PeftModel

        self._counter += 1
        internal = f"a{self._counter}"
        old = self._adapter
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.base, str(staging), adapter_name=internal, is_trainable=False
                )
            else:
                self.peft.load_adapter(str(staging), adapter_name=internal, is_trainable=False)
            self.peft.set_adapter(internal)
        except Exception as e:
            if self.peft is not None and internal in getattr(self.peft, "peft_config", {}):
                self.peft.delete_adapter(internal)
                if old is not None:
                    self.peft.set_adapter(old)
            raise BadRequest(f"Adapter {lora_name!r} does not fit the base model: {type(e).__name__}: {e}") from None
        if old is not None:
            self.peft.delete_adapter(old)
        self.peft.eval()
        self._adapter = internal
        self._live = True

    def deactivate(self) -> None:
        self._live = False  # the adapter stays loaded, disabled, until the next one replaces it

    def generate(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, coalesce: bool = False
    ) -> Generation:
        import torch

        with self._lock:
            if s.seed is not None:
                torch.manual_seed(s.seed)
            input_ids = torch.tensor([prompt_ids], dtype=torch.long)
            kw: dict[str, Any] = dict(
                max_new_tokens=max_new,
                eos_token_id=self.eot_ids,
                pad_token_id=self.pad_id,
                attention_mask=torch.ones_like(input_ids),
                return_dict_in_generate=True,
                output_logits=want_logprobs,
            )
            if s.temperature > 0:
                kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if s.stop:
                kw.update(stop_strings=s.stop, tokenizer=self.tokenizer)
            started = time.perf_counter()
            with torch.inference_mode():
                if self.peft is None:
                    out = self.base.generate(input_ids, **kw)
                elif self._live:
                    out = self.peft.generate(input_ids=input_ids, **kw)
                else:  # the base model's layers are wrapped by peft: disable the adapter
                    with self.peft.disable_adapter():
                        out = self.peft.generate(input_ids=input_ids, **kw)
            seconds = time.perf_counter() - started
        new = [int(t) for t in out.sequences[0, len(prompt_ids) :].tolist()]
        logprobs = None
        if want_logprobs:
            logprobs = [
                torch.log_softmax(step[0].float(), dim=-1)[tok].item()
                for step, tok in zip(out.logits, new, strict=False)
            ]
        return Generation(new, logprobs, seconds)

    def close(self) -> None:
        pass


def default_llama_server() -> str | None:
    """$CM2_LLAMA_SERVER, else the checked launcher that `deno task setup` writes once the build has passed its
    smoke test on this machine (never the raw build: it may crash on this CPU, see llama_server_check.ts)."""
    env = os.environ.get("CM2_LLAMA_SERVER")
    if env:
        return env
    p = Path(__file__).resolve().parents[2] / ".cm2" / "llama.cpp" / "llama-server"
    return str(p) if p.is_file() else None


_SIGNAL_MEANING = {
    "SIGILL": "illegal instruction: the binary uses a CPU instruction this machine cannot run "
    "(run `deno task setup` to check the build on this CPU)",
    "SIGKILL": "killed: out of memory? (see `dmesg`)",
    "SIGSEGV": "segmentation fault: a crash in native code",
    "SIGBUS": "bus error: a mapped file changed or the disk is full?",
    "SIGABRT": "aborted: an assertion or uncaught exception (see the log)",
}


def describe_returncode(rc: int) -> str:
    """A child's return code in words: 'SIGILL: illegal instruction: …' for a signal, else 'exit code N'."""
    import signal

    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
        return f"{name}: {_SIGNAL_MEANING.get(name, 'killed by a signal')}"
    return f"exit code {rc}"


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and HTTP requests run on short-lived
# threads: children are therefore forked from this one long-lived thread.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm2-spawner")


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux): SIGTERM when we die
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; close() and atexit stop it otherwise
        pass


class _Batch:
    """Identical first-step requests sent to llama-server as one ``n_cmpl`` request."""

    def __init__(self) -> None:
        self.size = 0
        self.closed = False
        self.done = threading.Event()
        self.results: list[Generation] = []
        self.error: BaseException | None = None


class LlamaCppEngine:
    """llama.cpp's ``llama-server`` as the generation engine for a GGUF base: this process keeps the OpenAI
    front end (rendering with the HF tokenizer, tool-call parsing, versions) and sends **token ids** to the
    child's ``/completion`` (so the prompt is exactly the trainer's rendering and the completion comes back as
    the ids the policy sampled). A new adapter is converted to a GGUF LoRA (``lora_gguf.py``) and a fresh child
    is started with ``--lora`` before the old one stops (a 135M model loads in about a second), so no request
    ever runs on a half-swapped model. Several requests run at once (``--parallel`` slots, continuous
    batching): the G rollouts of a group share the decode steps.

    Sampling is made plain: llama.cpp's default ``min_p`` 0.05 and other extra samplers are turned off, so the
    policy samples from softmax(logits / T) under top-p/top-k exactly as the trainer's loss assumes.
    """

    name = "llama.cpp"

    def __init__(
        self,
        binary: str,
        gguf_path: str,
        *,
        threads: int = 2,
        parallel: int = 4,
        ctx_per_slot: int = 4096,
        work_dir: str | None = None,
        log_path: str | None = None,
        start_timeout_s: float = 120.0,
        coalesce_window_s: float = 1.5,
    ) -> None:
        from .lora_gguf import BaseInfo

        self.binary = binary
        self.gguf = str(gguf_path)
        self.threads = threads
        self.concurrency = parallel
        self.max_context = ctx_per_slot
        self.start_timeout_s = start_timeout_s
        self.base_info = BaseInfo(gguf_path)
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="cm2-llama-policy-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path) if log_path else self.work_dir / "llama-server.log"
        self.eot_ids: list[int] = []  # set by PolicyModel from the tokenizer
        self.coalesce_window_s = coalesce_window_s
        self._batch_lock = threading.Lock()
        self._batches: dict[Any, _Batch] = {}
        self._counter = 0
        self._proc: Any = None
        self._port = 0
        self._lora: Path | None = None
        self._start(None)

    # -- child process ----------------------------------------------------------------------------------------
    def _spawn(self, lora: Path | None) -> tuple[Any, int]:
        import subprocess

        port = free_port()
        args = [
            self.binary,
            "-m",
            self.gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(self.max_context * self.concurrency),
            "-np",
            str(self.concurrency),
            # One KV stream per slot: with a unified cache every decode step of every rollout attends over
            # the cells of all rollouts (4x the attention work once a group's rollouts diverge).
            "--no-kv-unified",
            "-t",
            str(self.threads),
            "--cache-ram",
            "0",
            "--no-webui",
            "--metrics",
        ]
        if lora is not None:
            args += ["--lora", str(lora)]
        logf = open(self.log_path, "ab")
        try:
            proc = _SPAWNER.submit(
                subprocess.Popen,
                args,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            ).result()
        finally:
            logf.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EngineError(
                    f"llama-server died while starting ({describe_returncode(proc.returncode)}); "
                    f"last log lines:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, port
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        stop_process(proc)
        raise EngineError(
            f"llama-server did not answer /health within {self.start_timeout_s:.0f} s; "
            f"last log lines:\n{_tail(self.log_path)}"
        )

    def _start(self, lora: Path | None) -> None:
        proc, port = self._spawn(lora)
        old, old_lora = self._proc, self._lora
        self._proc, self._port, self._lora = proc, port, lora
        if old is not None:
            stop_process(old)
        if old_lora is not None and old_lora != lora:
            old_lora.unlink(missing_ok=True)

    # -- engine interface -------------------------------------------------------------------------------------
    def activate(self, staging: Path, lora_name: str) -> None:
        from .lora_gguf import LoraConversionError, convert_adapter

        self._counter += 1
        out = self.work_dir / f"adapter-{self._counter}.gguf"
        try:
            convert_adapter(staging, self.gguf, out, base=self.base_info)
        except LoraConversionError as e:
            raise BadRequest(f"Adapter {lora_name!r} does not fit the base model: {e}") from None
        try:
            self._start(out)
        except EngineError:
            out.unlink(missing_ok=True)
            raise

    def deactivate(self) -> None:
        self._start(None)

    def generate(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, coalesce: bool = False
    ) -> Generation:
        """One completion. With ``coalesce`` (the first step of an episode), identical requests arriving within
        ``coalesce_window_s`` (the G rollouts of a group) become one ``n_cmpl`` request: llama-server reads the
        shared prompt once and copies its KV cache to the other slots, instead of reading it G times."""
        if not coalesce or self.coalesce_window_s <= 0 or self.concurrency < 2:
            return self._request(prompt_ids, s, max_new, want_logprobs, 1)[0]
        key = (tuple(prompt_ids), s.temperature, s.top_p, s.top_k, tuple(s.stop), max_new, want_logprobs)
        with self._batch_lock:
            batch = self._batches.get(key)
            leader = batch is None or batch.closed or batch.size >= self.concurrency
            if leader:
                batch = _Batch()
                self._batches[key] = batch
            assert batch is not None
            index = batch.size
            batch.size += 1
        if leader:
            time.sleep(self.coalesce_window_s)
            with self._batch_lock:
                batch.closed = True
                if self._batches.get(key) is batch:
                    del self._batches[key]
            try:
                batch.results = self._request(prompt_ids, s, max_new, want_logprobs, batch.size)
            except BaseException as e:  # every member gets the error
                batch.error = e
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    def _request(
        self, prompt_ids: list[int], s: Sampling, max_new: int, want_logprobs: bool, n: int
    ) -> list[Generation]:
        body: dict[str, Any] = {
            "prompt": prompt_ids,
            "n_predict": max_new,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "top_n_sigma": -1.0,
            "seed": s.seed if s.seed is not None else -1,
            "stop": s.stop,
            "return_tokens": True,
            "cache_prompt": True,
            "n_probs": 1 if want_logprobs else 0,
            "stream": False,
            "n_cmpl": n,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{self._port}/completion",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=3600) as r:
                raw = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise EngineError(f"llama-server answered {e.code}: {e.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            proc = self._proc
            rc = proc.poll() if proc is not None else None
            how = f"it died: {describe_returncode(rc)}" if rc is not None else f"unreachable: {e}"
            raise EngineError(f"llama-server failed ({how}); last log lines:\n{_tail(self.log_path)}") from None
        seconds = time.perf_counter() - started
        outs = sorted(raw, key=lambda o: int(o.get("index", 0))) if isinstance(raw, list) else [raw]
        if len(outs) != n:
            raise EngineError(f"llama-server returned {len(outs)} completions for n_cmpl={n}")
        return [self._generation(o, want_logprobs, seconds) for o in outs]

    def _generation(self, out: dict[str, Any], want_logprobs: bool, seconds: float) -> Generation:
        ids = [int(t) for t in out.get("tokens") or []]
        probs = out.get("completion_probabilities") or []
        logprobs = [float(p["logprob"]) for p in probs] if want_logprobs else None
        if out.get("stop_type") == "eos" and (not ids or ids[-1] not in self.eot_ids):
            # Should llama-server leave the end-of-generation token out of `tokens`: the policy did sample it,
            # and the trainer scores it (it is what teaches the policy to stop), so it goes back on.
            eog = probs[len(ids)]["id"] if want_logprobs and len(probs) > len(ids) else self.eot_ids[0]
            ids.append(int(eog))
        if logprobs is not None and len(logprobs) != len(ids):
            # never made up: a log-prob that is not the sampler's would mislead rollout correction
            logprobs = logprobs[: len(ids)] if len(logprobs) > len(ids) else None
        return Generation(ids, logprobs, seconds)

    def close(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the child llama-server's; also used by tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: Any) -> None:
    """SIGTERM, then SIGKILL after 10 s; waits for the process either way."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
