"""Experiment specs and the seeded workloads they generate.

A spec (YAML or a Python module's ``EXPERIMENT``) says what jobs look like and how they
arrive; :func:`generate` turns it, a seed and a load into the list of jobs, so a (spec, seed,
load) triple always yields the same jobs.

Workloads:

- ``chain``: each job runs ``steps`` steps through one agent (it republishes its task until
  the last step), so one ready queue holds jobs at every stage. A job's size is drawn from
  ``service`` and split over its steps with lognormal jitter.
- ``fanout``: a ``split`` agent fans a job out into ``steps`` parts, a ``work`` agent runs each
  part (sizes drawn from ``service``), and a ``join`` agent fires when every part is done.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from blackboard.errors import ConfigError


class Service(BaseModel):
    """A service-time distribution (seconds of virtual time).

    ``lognormal``: ``mean`` and ``sigma`` (of the underlying normal); ``bounded_pareto``:
    ``alpha``, ``low``, ``high``; ``trace``: values drawn (with replacement) from ``trace``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dist: Literal["lognormal", "bounded_pareto", "trace"] = "bounded_pareto"
    mean: float = Field(default=1.0, gt=0)
    sigma: float = Field(default=1.0, ge=0)
    alpha: float = Field(default=1.1, gt=0)
    low: float = Field(default=0.1, gt=0)
    high: float = Field(default=100.0, gt=0)
    trace: tuple[float, ...] = ()

    def draw(self, rng: random.Random) -> float:
        """One service time."""
        if self.dist == "lognormal":
            mu = math.log(self.mean) - self.sigma**2 / 2
            return rng.lognormvariate(mu, self.sigma)
        if self.dist == "trace":
            if not self.trace:
                raise ConfigError("a trace service distribution needs values")
            return float(rng.choice(self.trace))
        # Bounded Pareto by inversion: F^-1(u) = L / (1 - u (1 - (L/H)^a))^(1/a).
        a, lo, hi = self.alpha, self.low, self.high
        u = rng.random()
        return float(lo / (1 - u * (1 - (lo / hi) ** a)) ** (1 / a))

    def expected(self) -> float:
        """The distribution's mean."""
        if self.dist == "lognormal":
            return self.mean
        if self.dist == "trace":
            return sum(self.trace) / len(self.trace) if self.trace else 0.0
        a, lo, hi = self.alpha, self.low, self.high
        if a == 1:
            return (lo * hi / (hi - lo)) * math.log(hi / lo)
        scale = lo**a / (1 - (lo / hi) ** a)
        return float(scale * (a / (a - 1)) * (lo ** (1 - a) - hi ** (1 - a)))


class Tenant(BaseModel):
    """A tenant: its weight (``drr``) and its share of the arrivals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(default=1.0, gt=0)
    share: float = Field(default=1.0, gt=0)


class Burst(BaseModel):
    """From ``start`` to ``start + length`` (fractions of the arrival period), ``tenant``'s
    arrival rate is multiplied by ``factor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    factor: float = Field(default=10.0, ge=1)
    start: float = Field(default=0.3, ge=0, le=1)
    length: float = Field(default=0.1, gt=0, le=1)


class Experiment(BaseModel):
    """What an experiment runs (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "experiment"
    workload: Literal["chain", "fanout"] = "chain"
    jobs: int = Field(default=1000, ge=1)
    steps: int = Field(default=3, ge=1)
    concurrency: int = Field(default=8, ge=1)
    partitions: int = Field(default=8, ge=1)
    service: Service = Service()
    step_jitter: float = Field(default=0.3, ge=0, description="lognormal sigma per step")
    tenants: dict[str, Tenant] = Field(default_factory=lambda: {"default": Tenant()})
    bursts: tuple[Burst, ...] = ()
    policies: tuple[str, ...] = ("fifo", "srpt", "plas", "join_aware")
    loads: tuple[float, ...] = (0.9,)
    seeds: int = Field(default=5, ge=1)
    aging: float = Field(default=0.1, ge=0)
    drr_charge: Literal["time", "records"] = Field(
        default="time", description="what drr charges a tenant per record: time or one"
    )

    @property
    def weights(self) -> dict[str, float]:
        """Tenant → weight."""
        return {name: t.weight for name, t in self.tenants.items()}


def load_spec(path: str | Path) -> Experiment:
    """An experiment from a YAML file or a Python file defining ``EXPERIMENT``.

    Raises:
        ConfigError: the file is missing or does not describe an experiment.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no experiment spec at {p}")
    try:
        if p.suffix == ".py":
            namespace: dict[str, Any] = {"__name__": "experiment_spec", "__file__": str(p)}
            exec(compile(p.read_text(), str(p), "exec"), namespace)
            found = namespace.get("EXPERIMENT")
            if isinstance(found, Experiment):
                return found
            if isinstance(found, dict):
                return Experiment.model_validate(found)
            raise ConfigError(f"{p} defines no EXPERIMENT (an Experiment or a dict)")
        import yaml

        return Experiment.model_validate(yaml.safe_load(p.read_text()) or {})
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"bad experiment spec {p}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Job:
    """One generated job: when it arrives, whose it is, and its steps' service times."""

    index: int
    arrival: float
    tenant: str
    sizes: tuple[float, ...]

    @property
    def correlation_id(self) -> str:
        """The job's correlation id (and partition key)."""
        return f"job-{self.index:06d}"

    @property
    def work(self) -> float:
        """Total service time of the job."""
        return sum(self.sizes)


def mean_job_work(spec: Experiment) -> float:
    """Expected service time of one job (every step)."""
    if spec.workload == "chain":
        return spec.service.expected()
    return spec.service.expected() * spec.steps


def generate(spec: Experiment, seed: int, load: float) -> list[Job]:
    """The jobs of one run: Poisson arrivals at a rate making the agent ``load`` busy
    (``load * concurrency / mean job work`` jobs per second), bursts on top, tenants drawn by
    their share.

    Raises:
        ConfigError: a load that is not positive or a burst for an unknown tenant.
    """
    if load <= 0:
        raise ConfigError(f"load must be > 0, got {load}")
    for burst in spec.bursts:
        if burst.tenant not in spec.tenants:
            raise ConfigError(f"burst for unknown tenant {burst.tenant!r}")
    rng = random.Random(seed)
    names = sorted(spec.tenants)
    shares = [spec.tenants[n].share for n in names]
    total_share = sum(shares)
    rate = load * spec.concurrency / mean_job_work(spec)
    period = spec.jobs / rate
    jobs: list[Job] = []
    t = 0.0
    for i in range(spec.jobs):
        t += rng.expovariate(rate)
        tenant = rng.choices(names, shares)[0]
        jobs.append(Job(i, t, tenant, _sizes(spec, rng)))
    for burst in spec.bursts:  # extra jobs of one tenant inside the burst window
        share = spec.tenants[burst.tenant].share / total_share
        start, end = burst.start * period, (burst.start + burst.length) * period
        extra_rate = (burst.factor - 1) * rate * share
        t = start
        while True:
            t += rng.expovariate(extra_rate)
            if t >= end:
                break
            jobs.append(Job(len(jobs), t, burst.tenant, _sizes(spec, rng)))
    jobs.sort(key=lambda j: (j.arrival, j.index))
    return jobs


def _sizes(spec: Experiment, rng: random.Random) -> tuple[float, ...]:
    if spec.workload == "fanout":
        return tuple(spec.service.draw(rng) for _ in range(spec.steps))
    size = spec.service.draw(rng)
    jitter = spec.step_jitter
    weights: Sequence[float] = [rng.lognormvariate(0.0, jitter) for _ in range(spec.steps)]
    total = sum(weights)
    return tuple(size * w / total for w in weights)
