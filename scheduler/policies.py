"""Policies by name: ``fifo``, ``srpt``, ``plas``, ``join_aware``, and ``drr`` over any of
them (``drr`` alone is ``drr+fifo``). A :class:`PolicySpec` carries a policy's options; a
plain string names a policy with its defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from blackboard.errors import ConfigError
from scheduler.base import ReadyQueue
from scheduler.drr import Charge, DrrQueue
from scheduler.fifo import FifoQueue, PlainFifoQueue
from scheduler.join_aware import JoinAwareQueue
from scheduler.ledger import Estimator, Ledger, NullLedger
from scheduler.plas import PlasQueue
from scheduler.srpt import SrptQueue

T = TypeVar("T")

#: The policies a ready queue can order by (``drr`` composes with each).
BASE_POLICIES = ("fifo", "srpt", "plas", "join_aware")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy and its options.

    Attributes:
        name: ``fifo``, ``srpt``, ``plas``, ``join_aware``, ``drr`` or ``drr+<policy>``.
        estimator: remaining work of a record's correlation id (``srpt``, ``join_aware``;
            default: the agent's running mean of service time).
        aging: ``plas``: seconds of attained service one second of waiting is worth.
        weights: ``drr``: tenant → weight (1 for others).
        charge: ``drr``: what a started record costs its tenant's share: ``time`` (the
            default: its measured service time, so shares are shares of handler time) or
            ``records`` (one per record: shares of records started).
    """

    name: str = "fifo"
    estimator: Estimator | None = field(default=None, compare=False)
    aging: float = 0.1
    weights: Mapping[str, float] = field(default_factory=dict, compare=False)
    charge: Charge = "time"

    @property
    def parts(self) -> tuple[bool, str]:
        """(fair share across tenants, the base policy)."""
        name = self.name.strip().lower()
        if name == "drr":
            return True, "fifo"
        if name.startswith("drr+"):
            return True, name[4:]
        return False, name

    def check(self) -> PolicySpec:
        """This spec, if it names a known policy.

        Raises:
            ConfigError: an unknown policy name, a negative aging rate or weight, an unknown charge.
        """
        _, base = self.parts
        if base not in BASE_POLICIES:
            raise ConfigError(
                f"unknown scheduling policy {self.name!r}; choose one of "
                f"{', '.join(BASE_POLICIES)}, drr or drr+<policy>"
            )
        if self.aging < 0 or any(w <= 0 for w in self.weights.values()):
            raise ConfigError("aging must be >= 0 and tenant weights > 0")
        if self.charge not in ("records", "time"):
            raise ConfigError(f"drr charge must be 'records' or 'time', not {self.charge!r}")
        return self


PolicyLike: TypeAlias = "str | PolicySpec"


def as_spec(policy: PolicyLike | None) -> PolicySpec:
    """A :class:`PolicySpec` from a name or a spec (None: ``fifo``), checked."""
    if policy is None:
        return PolicySpec()
    if isinstance(policy, str):
        return PolicySpec(policy).check()
    return policy.check()


def _base(name: str, spec: PolicySpec, agent: str, ledger: Ledger) -> ReadyQueue[Any]:
    makers: dict[str, Callable[[], ReadyQueue[Any]]] = {
        "fifo": lambda: FifoQueue(agent, ledger),
        "srpt": lambda: SrptQueue(agent, ledger, spec.estimator),
        "plas": lambda: PlasQueue(agent, ledger, spec.aging),
        "join_aware": lambda: JoinAwareQueue(agent, ledger, spec.estimator),
    }
    return makers[name]()


def make_queue(policy: PolicyLike | None, agent: str, ledger: Ledger) -> ReadyQueue[Any]:
    """The ready queue of ``agent`` for ``policy``.

    Raises:
        ConfigError: an unknown policy.
    """
    spec = as_spec(policy)
    fair, base = spec.parts
    if not fair and base == "fifo" and isinstance(ledger, NullLedger):
        return PlainFifoQueue(agent, ledger)
    if not fair:
        return _base(base, spec, agent, ledger)
    return DrrQueue(
        agent, ledger, lambda: _base(base, spec, agent, ledger), spec.weights, base, spec.charge
    )
