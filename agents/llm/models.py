"""Models named by URL-like strings, and the adapters a worker keeps for them.

``provider:model[?option=value&...]``:

- ``openai:gpt-4o-mini``; any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama,
  LM Studio) with ``?base_url=http://host:port/v1`` (and ``&structured=json_object`` for a
  server without the ``json_schema`` response format, ``&provider=<name>`` for its name in
  spans and prices);
- ``anthropic:claude-haiku-4-5`` (``?base_url=...`` likewise);
- ``local:smollm2`` or ``local:/path/to/model.gguf``: llama.cpp in this process.

API keys come from the providers' usual variables (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``),
never from the string: a model string is logged and traced, a key never is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from agents.llm.adapter import ModelAdapter
from blackboard.errors import ConfigError
from blackboard.redact import redact_url

PROVIDERS = ("openai", "anthropic", "local")
_OPTIONS = {"base_url", "structured", "provider", "n_ctx"}
_STRUCTURED = ("json_schema", "json_object", "none")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed model string."""

    ref: str
    provider: str
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str) -> str | None:
        """The value of ``?key=``, or None."""
        return dict(self.options).get(key)

    @property
    def shown(self) -> str:
        """The model string as logs, spans and errors show it: a base URL's password and
        secret query values masked (:func:`blackboard.redact.redact_url`)."""
        if not self.options:
            return self.ref
        options = [(k, redact_url(v) if k == "base_url" else v) for k, v in self.options]
        return f"{self.provider}:{self.name}?" + "&".join(f"{k}={v}" for k, v in options)

    @property
    def endpoint(self) -> str:
        """Where requests go: one 429 gate per endpoint (:mod:`agents.llm.gate`)."""
        return f"{self.provider}@{self.option('base_url') or 'default'}"


def parse_model(ref: str) -> ModelRef:
    """Parse ``provider:model[?options]``.

    Raises:
        ConfigError: an unknown provider or option, or no model name (the message masks a
            base URL's password).
    """
    try:
        return _parse(ref)
    except ConfigError as exc:
        raise ConfigError(_PASSWORD.sub(r"//\1:***@", str(exc))) from None


_PASSWORD = re.compile(r"//([^:/@\s]+):[^@/\s]+@")


def _parse(ref: str) -> ModelRef:
    provider, sep, rest = ref.partition(":")
    name, _, query = rest.partition("?")
    if not sep or not name:
        raise ConfigError(f"model {ref!r} must look like provider:model ({', '.join(PROVIDERS)})")
    if provider not in PROVIDERS:
        raise ConfigError(f"model {ref!r}: unknown provider {provider!r} ({', '.join(PROVIDERS)})")
    try:
        options = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(f"model {ref!r}: malformed options {query!r}") from None
    unknown = sorted({k for k, _ in options} - _OPTIONS)
    if unknown:
        raise ConfigError(f"model {ref!r}: unknown option(s) {', '.join(unknown)}")
    structured = dict(options).get("structured")
    if structured is not None and structured not in _STRUCTURED:
        raise ConfigError(f"model {ref!r}: structured must be one of {', '.join(_STRUCTURED)}")
    return ModelRef(ref, provider, name, options)


def make_adapter(model: ModelRef, timeout_s: float) -> ModelAdapter:
    """A new adapter for ``model``.

    Raises:
        MissingDependencyError: the provider's package or API key is missing.
        ConfigError: a local model that does not exist.
    """
    base_url = model.option("base_url")
    if model.provider == "openai":
        from agents.llm.openai_adapter import OpenAIAdapter

        return OpenAIAdapter(
            model.name,
            base_url=base_url,
            structured=model.option("structured") or "json_schema",  # type: ignore[arg-type]
            timeout_s=timeout_s,
            provider=model.option("provider") or "openai",
        )
    if model.provider == "anthropic":
        from agents.llm.anthropic_adapter import AnthropicAdapter

        return AnthropicAdapter(
            model.name,
            base_url=base_url,
            timeout_s=timeout_s,
            provider=model.option("provider") or "anthropic",
        )
    from agents.llm.local_adapter import LocalAdapter

    return LocalAdapter(model.name, n_ctx=int(model.option("n_ctx") or 2048))


class Models:
    """The adapters of a worker, one per model string, made on first use (one HTTP pool per
    model), with stand-ins given in code taking the place of a string's adapter.

    Args:
        overrides: model string -> adapter to use for it (tests, injected fakes).
        timeout_s: the longest one request may take.
    """

    def __init__(
        self, overrides: Mapping[str, ModelAdapter] | None = None, timeout_s: float = 120.0
    ) -> None:
        self._overrides = dict(overrides or {})
        self._made: dict[str, ModelAdapter] = {}
        self._timeout_s = timeout_s

    def get(self, ref: str) -> tuple[ModelAdapter, ModelRef]:
        """The adapter for ``ref`` and its parsed form.

        Raises:
            ConfigError: a malformed model string.
            MissingDependencyError: the provider's package or key is missing.
        """
        if ref in self._overrides:
            adapter = self._overrides[ref]
            try:
                known = parse_model(ref)
                options = known.options
                name = known.name
            except ConfigError:  # a stand-in's own name, e.g. "stand-in"
                options, name = (), ref.partition(":")[2] or ref
            return adapter, ModelRef(ref, adapter.provider, name, options)
        parsed = parse_model(ref)
        made = self._made.get(ref)
        if made is None:
            made = self._made[ref] = make_adapter(parsed, self._timeout_s)
        return made, parsed

    async def aclose(self) -> None:
        """Close every adapter made here (stand-ins belong to whoever gave them)."""
        made, self._made = list(self._made.values()), {}
        for adapter in made:
            await adapter.aclose()
