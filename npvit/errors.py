"""The one exception type meant for users: its message is a complete, one-line explanation.

The CLI prints it as ``npvit: error: <message>`` and exits non-zero, with no traceback. It is a
ValueError so API callers can catch it the usual way. Any other exception is a bug in npvit.
"""


class NpvitError(ValueError):
    pass


# An error line is at most this long: a message quoting a hostile file's contents stays readable.
MAX_ERROR_CHARS = 1000


def error_line(message) -> str:
    """``npvit: error: <message>`` on one line (newlines shown as \\n), capped in length."""
    text = str(message).replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"... ({len(text) - MAX_ERROR_CHARS:,} more characters)"
    return f"npvit: error: {text}"
