"""Exceptions raised by diffinv. Every user-facing failure is a :class:`DiffinvError` subclass."""


class DiffinvError(Exception):
    """Base class of every error diffinv raises on bad input."""


class UnknownNameError(DiffinvError, KeyError):
    """A name (prior, data set, operator, solver, ...) is not registered."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.args[0]


class MissingAssetError(DiffinvError, FileNotFoundError):
    """A data set or weight file is not installed; the message says how to install it."""


class IntegrityError(DiffinvError):
    """A file's SHA-256 does not match the pinned value, or a checkpoint is corrupt/mismatched."""


class ShapeError(DiffinvError, ValueError):
    """A tensor has the wrong shape, channel count or size for what it is given to."""


class NonFiniteError(DiffinvError, FloatingPointError):
    """NaN or Inf where finite values are required."""


class ResourceError(DiffinvError):
    """A request would need more memory (or disk) than the machine has (:mod:`diffinv.resources`);
    refused before anything is allocated."""


class RangeWarning(UserWarning):
    """An image looks as if it broke the [-1, 1] contract (e.g. it lies in [0, 1])."""
