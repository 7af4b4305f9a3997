"""User-facing errors.

Every problem a user can cause (a missing file, a corrupt record, a mismatched checkpoint) is raised as a
``VDistillError`` whose message is one actionable line naming the file or record. The CLI prints such errors
without a traceback; anything else is a bug and keeps its traceback.
"""


class VDistillError(Exception):
    """An error caused by the user's input, with a one-line message that says what to do."""


class DataError(VDistillError):
    """Bad input data: unreadable, corrupt or not YouTube-8M-shaped files and records."""


class ConfigError(VDistillError):
    """An inconsistent configuration or checkpoint (wrong family, sizes, class counts, frame counts)."""
