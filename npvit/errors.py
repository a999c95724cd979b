"""The one exception type meant for users: its message is a complete, one-line explanation.

The CLI prints it as ``npvit: error: <message>`` and exits non-zero, with no traceback. It is a
ValueError so API callers can catch it the usual way. Any other exception is a bug in npvit.
"""


class NpvitError(ValueError):
    pass
