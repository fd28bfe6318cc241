"""What a call cost, from the offline price tables of ``genai-prices`` (cache reads and writes
at their own rates), with the table's version so a figure can be checked later."""

from __future__ import annotations

import functools
from importlib import metadata

from agents.llm.result import Usage

#: Providers whose models are free to run (in process, or a server of one's own).
FREE_PROVIDERS = frozenset({"local", "function"})


@functools.cache
def table_version() -> str:
    """The price table's name and version (``genai-prices 0.2.3``)."""
    try:
        return f"genai-prices {metadata.version('genai-prices')}"
    except metadata.PackageNotFoundError:
        return "genai-prices (not installed)"


def price(provider: str, model: str, usage: Usage) -> tuple[float | None, str]:
    """``(cost in USD, prices)`` of ``usage`` on ``model``: None when the table does not know
    the model (``prices`` then says so), 0 for free providers."""
    if provider in FREE_PROVIDERS:
        return 0.0, f"{provider} (free)"
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price
    except ImportError:
        return None, table_version()
    if not _known(provider, model):
        return None, f"{table_version()}: no price for {provider}:{model}"
    try:
        found = calc_price(
            PriceUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens or None,
                cache_write_tokens=usage.cache_write_tokens or None,
            ),
            model,
            provider_id=provider,
        )
    except LookupError:
        return None, f"{table_version()}: no price for {provider}:{model}"
    return float(found.total_price), table_version()


@functools.lru_cache(maxsize=1024)
def _known(provider: str, model: str) -> bool:
    """Whether the table prices ``model`` (a miss costs ~0.3 ms to find: asked once)."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    try:
        calc_price(PriceUsage(input_tokens=0, output_tokens=0), model, provider_id=provider)
    except LookupError:
        return False
    return True
