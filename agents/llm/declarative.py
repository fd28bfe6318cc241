"""The declarative LLM agent's handler: instructions as the system message, the input (or a
join's every part) as the prompt, or what a prompt function makes of it, and the declared
type as the answer."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agents.context import Context

#: Makes the prompt from the input (sync or async); None: the input's fields as JSON.
PromptFn = Callable[[Any, "Context"], "str | Awaitable[str]"]


def default_prompt(payload: Any) -> str:
    """The input as its type's name and its fields as JSON; a join's set as each part so, in
    arrival order."""
    parts = getattr(payload, "parts", None)
    if parts is not None:  # a JoinSet: everything the agent read for this key
        return "\n\n".join(f"{p.artifact.type}:\n{_json(p.artifact.payload)}" for p in parts)
    return f"{type(payload).__name__}:\n{_json(payload)}"


def _json(payload: BaseModel) -> str:
    return orjson.dumps(payload.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode()


def llm_handler(
    publishes: type[BaseModel],
    instructions: str,
    prompt: PromptFn | None,
    *,
    max_tokens: int,
    temperature: float | None,
    max_reasks: int | None,
) -> Callable[[Any, Context], Awaitable[BaseModel]]:
    """The handler of an LLM agent that answers each input with one ``publishes``."""

    async def handler(payload: Any, ctx: Context) -> BaseModel:
        if prompt is None:
            text = default_prompt(payload)
        else:
            made = prompt(payload, ctx)
            text = await made if inspect.isawaitable(made) else made
        return await ctx.llm(
            publishes,
            str(text),
            system=instructions,
            max_tokens=max_tokens,
            temperature=temperature,
            max_reasks=max_reasks,
        )

    return handler
