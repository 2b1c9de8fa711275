"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HarnessError(Exception):
    """Bad input or an unusable state, described in one line for the user.

    Raise it at the boundary (readers, CLI, config, checkpoint loading) with a message that names
    the file / column / argument, the offending value and what was expected.
    """
