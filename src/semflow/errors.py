"""Exceptions with messages meant for people: the CLI prints them, the service maps them to 4xx."""

from __future__ import annotations


class SemflowError(Exception):
    """Base class; `str(err)` is a complete sentence for the user."""


class Verdict(SemflowError):
    """A decision about the data or the settings that a retry would not change (a failed
    data check, an invalid parameter): callers stop instead of retrying."""


class SettingsError(Verdict):
    """A setting or parameter is invalid; the message names it."""


class SourceError(SemflowError):
    """The source could not be read (down, bad query, bad mapping)."""


class IndexLockedError(SemflowError):
    """Another process holds the writer lock of the embedded index."""


class IndexError_(SemflowError):
    """The vector index is missing, corrupt or incompatible."""


class FilterError(SemflowError):
    """A search filter is not allowed or malformed."""


class SearchModeError(SemflowError):
    """A search mode the index generation cannot answer (sparse or hybrid on a generation
    built without sparse vectors)."""


class ModelMismatchError(SemflowError):
    """A query would be embedded with another model than the one that built the index."""
