"""The simulator: the real :class:`agents.worker.Worker` and ready-queue policies on the
embedded store, under a virtual clock, with seeded workloads (see
:mod:`blackboard.shell.sim.run`)."""
