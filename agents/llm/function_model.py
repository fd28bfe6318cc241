"""A model that is a Python function: for tests and for injecting a stand-in through the worker
(``Worker(..., models={"openai:gpt-4o-mini": FunctionModel(answer)})``) without
monkeypatching."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from agents.llm.adapter import StructuredMode
from agents.llm.result import LLMRequest, LLMResult, Usage

Answer = Callable[[LLMRequest], "LLMResult | str | Awaitable[LLMResult | str]"]


class FunctionModel:
    """Answers with ``fn(request)``: an :class:`LLMResult`, or text (usage counted as one token
    per four characters). ``fn`` may raise :class:`~blackboard.errors.LLMError` to fail.
    ``provider`` and ``structured`` say which model it stands in for (a cassette's keys and
    the prompts made depend on both)."""

    def __init__(
        self, fn: Answer, *, provider: str = "function", structured: StructuredMode = "none"
    ) -> None:
        self.fn = fn
        self.provider = provider
        self.structured: StructuredMode = structured
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResult:
        """Call the function."""
        self.requests.append(request)
        answer = self.fn(request)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, LLMResult):
            return answer
        text = str(answer)
        return LLMResult(
            text=text,
            usage=Usage(
                input_tokens=max(1, request.prompt_chars() // 4),
                output_tokens=max(1, len(text) // 4),
            ),
            model=request.model,
            provider=self.provider,
        )

    async def aclose(self) -> None:
        """Nothing to close."""
