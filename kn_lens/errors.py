"""The errors a user can cause, and the one base they share: :class:`KnLensError`.

Every error that bad input can raise (a missing file, a malformed fact, a prompt without
``[MASK]``, an option out of range) is a :class:`KnLensError`. The ``kn-lens`` command prints such
an error as one line and exits with status 2; any other exception is a bug in kn_lens, and the
command prints its traceback and asks for a report. ``KnLensError`` subclasses ``ValueError``, so
code written against the earlier ``ValueError`` contract keeps working.

This module imports nothing from kn_lens (and no torch), so every layer may raise these.
"""

from __future__ import annotations

__all__ = ["AttributionError", "KnLensError"]


class KnLensError(ValueError):
    """Bad input to kn_lens: the message names the offending item and says what to do."""


class AttributionError(KnLensError):
    """A bad argument to :func:`kn_lens.attribute` (a prompt, an answer, an option value)."""
