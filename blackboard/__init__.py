"""kafka-blackboard: typed artifacts on a partitioned blackboard, shared by agents.

The names most programs need are importable from here.
"""

from __future__ import annotations

from blackboard.artifacts import (
    Artifact,
    ArtifactType,
    Envelope,
    TypeRegistry,
    artifact,
    default_registry,
)
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import BlackboardError
from blackboard.stores import open_store

__all__ = [
    "Artifact",
    "ArtifactType",
    "Blackboard",
    "BlackboardError",
    "BlackboardSettings",
    "Envelope",
    "TypeRegistry",
    "artifact",
    "default_registry",
    "open_store",
]
