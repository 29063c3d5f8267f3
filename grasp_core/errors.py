"""Errors a user can fix. Messages follow `<file, key or domain>: <what is wrong>; <how to fix>`."""

from __future__ import annotations


class GraspError(Exception):
    """Base class: something the user can fix (bad input, config, data or checkpoint).

    `exit_code` is the `grasp` command's exit status for it: 2 bad input here; subclasses for a busy
    workspace or a transient store fault use 75 (EX_TEMPFAIL: try again later).
    """

    exit_code: int = 2


class ConfigError(GraspError):
    """params.yaml (or an override) is missing, malformed or out of range."""


class DataLayoutError(GraspError):
    """A data folder does not follow data/<domain>/{train,val,test}/<class>/*.png."""


class CheckpointMismatchError(GraspError):
    """A checkpoint is unreadable, or its architecture, classes or shapes do not match."""


class UnknownArchitectureError(ConfigError):
    """`model.arch` names no registered architecture."""
