"""One exception type for problems the user can fix; the CLI prints it as a single line."""


class GTVError(Exception):
    """Bad input, a bad model file or a bad request, worded for the user in one line."""


class Cancelled(GTVError):
    """The caller's cancel check asked the work to stop."""
