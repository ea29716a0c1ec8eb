"""The one exception type for mistakes a user can make; the CLI prints it as one line."""


class NmtError(Exception):
    """A user-caused error: bad path, bad config, corrupt input. Printed without a traceback."""
