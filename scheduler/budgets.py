"""Cost and token budgets of model calls, per agent, per tenant or per correlation id: a call
that would pass its budget is dead-lettered (stage ``budget``) or waits for the next window,
as the budget says. Spending is counted per worker process."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from blackboard.errors import ConfigError

#: Whose spending a budget counts.
BudgetScope = Literal["agent", "tenant", "correlation"]


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit on what model calls spend.

    Attributes:
        max_cost_usd: the most dollars (None: no cost limit).
        max_tokens: the most tokens in and out (None: no token limit).
        per: one budget for the agent, per tenant, or per correlation id.
        window_s: the budget starts again every this many seconds (None: never, for the
            life of the worker).
        on_exceed: ``dead_letter`` the record (stage ``budget``), or ``defer`` it until the
            window starts again (needs ``window_s``).
    """

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    per: BudgetScope = "agent"
    window_s: float | None = None
    on_exceed: Literal["dead_letter", "defer"] = "dead_letter"

    def __post_init__(self) -> None:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ConfigError("a budget needs max_cost_usd or max_tokens")
        if (self.max_cost_usd or 1) <= 0 or (self.max_tokens or 1) <= 0:
            raise ConfigError("a budget's limits must be > 0")
        if self.per not in ("agent", "tenant", "correlation"):
            raise ConfigError(f"a budget is per agent, tenant or correlation, not {self.per!r}")
        if self.window_s is not None and self.window_s <= 0:
            raise ConfigError("a budget's window_s must be > 0")
        if self.on_exceed == "defer" and self.window_s is None:
            raise ConfigError("a budget that defers needs a window_s to wait for")

    def scope(self, agent: str, tenant: str | None, correlation_id: str) -> str:
        """The key this budget counts a call under."""
        if self.per == "tenant":
            return f"{agent}|tenant:{tenant or ''}"
        if self.per == "correlation":
            return f"{agent}|corr:{correlation_id}"
        return agent


@dataclass(slots=True)
class _Spent:
    window: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    held_tokens: int = 0
    held_cost_usd: float = 0.0


#: What :meth:`BudgetLedger.check` says of a call that fits only once calls in flight settle.
WAIT = "wait"


@dataclass(slots=True)
class BudgetLedger:
    """What each budget scope spent in the current window, and what calls in flight hold."""

    _spent: dict[tuple[int, str], _Spent] = field(default_factory=lambda: defaultdict(_Spent))

    def _entry(self, budget: Budget, scope: str, now: float) -> _Spent:
        spent = self._spent[(id(budget), scope)]
        window = int(now // budget.window_s) if budget.window_s else 0
        if spent.window != window:
            spent.window, spent.tokens, spent.cost_usd = window, 0, 0.0
        return spent

    def check(
        self, budget: Budget, scope: str, now: float, tokens: int, cost_usd: float
    ) -> str | None:
        """None if a call estimated at ``tokens`` and ``cost_usd`` fits ``budget``;
        :data:`WAIT` if it fits what was spent but not with what calls in flight hold (they
        settle soon, most for less than they hold); else why it would pass the budget."""
        spent = self._entry(budget, scope, now)
        over = _over(budget, spent.tokens, spent.cost_usd, tokens, cost_usd)
        if over is not None:
            return over
        held = _over(
            budget,
            spent.tokens + spent.held_tokens,
            spent.cost_usd + spent.held_cost_usd,
            tokens,
            cost_usd,
        )
        return None if held is None else WAIT

    def hold(self, budget: Budget, scope: str, now: float, tokens: int, cost_usd: float) -> None:
        """Hold a call's estimate until it settles."""
        spent = self._entry(budget, scope, now)
        spent.held_tokens += tokens
        spent.held_cost_usd += cost_usd

    def settle(
        self,
        budget: Budget,
        scope: str,
        now: float,
        held: tuple[int, float],
        tokens: int,
        cost_usd: float,
    ) -> None:
        """A call held ``held`` (tokens, cost) and used ``tokens`` and ``cost_usd``."""
        spent = self._entry(budget, scope, now)
        spent.held_tokens = max(0, spent.held_tokens - held[0])
        spent.held_cost_usd = max(0.0, spent.held_cost_usd - held[1])
        spent.tokens += tokens
        spent.cost_usd += cost_usd

    def spend(self, budget: Budget, scope: str, now: float, tokens: int, cost_usd: float) -> None:
        """Count a call's tokens and cost."""
        self.settle(budget, scope, now, (0, 0.0), tokens, cost_usd)

    def next_window_s(self, budget: Budget, now: float) -> float:
        """Seconds until ``budget``'s window starts again."""
        assert budget.window_s is not None
        return budget.window_s - (now % budget.window_s)


def _over(
    budget: Budget, spent_tokens: int, spent_cost: float, tokens: int, cost_usd: float
) -> str | None:
    if budget.max_tokens is not None and spent_tokens + tokens > budget.max_tokens:
        return f"{spent_tokens} + ~{tokens} tokens over the budget of {budget.max_tokens}"
    if budget.max_cost_usd is not None and spent_cost + cost_usd > budget.max_cost_usd:
        return f"${spent_cost:.6f} + ~${cost_usd:.6f} over the budget of ${budget.max_cost_usd}"
    return None
