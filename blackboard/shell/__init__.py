"""The application shell, above the runtime: the ``blackboard`` command line
(:mod:`blackboard.shell.cli`), the operators' dashboard (:mod:`blackboard.shell.dashboard`),
``TestBoard`` for unit-testing agents (:mod:`blackboard.shell.testing`), the scheduling
simulator (:mod:`blackboard.shell.sim`) and the experiment runner
(:mod:`blackboard.shell.experiment`).

It may import every layer; nothing below it imports it (``tests/test_layers.py``).
"""
