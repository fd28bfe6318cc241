"""Artifact types used by the contract suite."""

from __future__ import annotations

from pydantic import BaseModel

from blackboard.artifacts import TypeRegistry, artifact

registry = TypeRegistry()


@artifact("test.Task", version=1, registry=registry)
class Task(BaseModel):
    n: int
    text: str = ""


@artifact("test.Result", version=1, registry=registry)
class Result(BaseModel):
    n: int
    by: str = ""
