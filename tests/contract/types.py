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


@artifact("test.Doc", version=1, registry=registry)
class Doc(BaseModel):
    n: int


@artifact("test.Vote", version=1, registry=registry)
class Vote(BaseModel):
    n: int
    voter: str


@artifact("test.Tally", version=1, registry=registry)
class Tally(BaseModel):
    n: int
    voters: list[str]
    complete: bool = True
