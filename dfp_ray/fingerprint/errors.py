"""Errors raised by the model-fingerprint code.

All of them subclass :class:`FingerprintError` (itself a ``ValueError``) so a caller, such as
the CLI or an HTTP layer, can turn every user-actionable problem into one clean message
(or a 4xx response) without catching unrelated bugs.
"""

from __future__ import annotations


class FingerprintError(ValueError):
    """A problem with the inputs of fingerprint creation or scoring that the user can fix."""


class UnsafeInputError(FingerprintError):
    """An input was refused because loading it could run code or exhaust resources.

    Raised *before* anything in the input is executed or fully decompressed.
    """


class FingerprintMismatchError(FingerprintError):
    """Scoring options or the model do not match what the fingerprint was created with."""
