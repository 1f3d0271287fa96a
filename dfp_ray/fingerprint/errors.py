"""Errors raised by the model-fingerprint code.

All of them subclass :class:`FingerprintError` (itself a ``ValueError``) so a caller, such as
the CLI or an HTTP layer, can turn every user-actionable problem into one clean message
(or a 4xx response) without catching unrelated bugs. ``field`` names the input at fault
when the code that raises knows it (``"num_layers"``, ``"percentile"``, ``"model"``, ...), so
an HTTP layer can say which form field to fix.
"""

from __future__ import annotations


class FingerprintError(ValueError):
    """A problem with the inputs of fingerprint creation or scoring that the user can fix."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsafeInputError(FingerprintError):
    """An input was refused because loading it could run code or exhaust resources.

    Raised *before* anything in the input is executed or fully decompressed.
    """


class FingerprintMismatchError(FingerprintError):
    """Scoring options or the model do not match what the fingerprint was created with."""
