"""The one exception the Slicer side raises for problems the user can fix."""


class GTVAutoSegError(RuntimeError):
    """A one-line message for the status line, the batch summary or the Python console."""
