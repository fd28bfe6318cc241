"""Two tenants with weights 3 : 1 and equal arrivals, overloaded, and a burst from one of them:
``blackboard experiment bench/experiments/tenants.py``."""

from blackboard.shell.sim.workload import Burst, Experiment, Service, Tenant

EXPERIMENT = Experiment(
    name="tenants",
    jobs=1500,
    steps=1,
    concurrency=8,
    service=Service(dist="lognormal", mean=1.0, sigma=1.0),
    tenants={"gold": Tenant(weight=3.0), "free": Tenant(weight=1.0)},
    bursts=(Burst(tenant="free", factor=10.0, start=0.3, length=0.1),),
    policies=("fifo", "drr", "drr+srpt"),
    loads=(0.8, 2.0),
    seeds=3,
)
