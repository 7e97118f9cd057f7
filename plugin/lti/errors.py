"""The one error type of the LTI layer: a reason code (for logs and metrics) and a message for people."""

from __future__ import annotations


class LtiError(Exception):
    """A refused LTI request. ``reason`` is a stable code; ``message`` says what was wrong and what to do."""

    def __init__(self, reason: str, message: str, *, status: int = 400, hint: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.hint = hint
