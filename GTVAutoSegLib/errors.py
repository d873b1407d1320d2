"""One exception type for problems the user can fix; the CLI prints it as a single line."""


class GTVError(Exception):
    """Bad input, a bad model file or a bad request, worded for the user in one line."""


class Cancelled(GTVError):
    """The caller's cancel check asked the work to stop."""


class MissingModule:
    """Stands in for an optional module that failed to import; any use raises a one-line GTVError.

    SimpleITK is needed only to read and write image files. The GPU machines training runs on can
    lack it, and work there from packed slice tables (``training/tablestore.py``) and arrays, so the
    library imports without it and says what is missing the moment a file is touched.
    """

    def __init__(self, name: str, reason: Exception):
        self._name, self._reason = name, reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # keep copy, pickle and introspection from tripping over it
            raise AttributeError(attr)
        raise GTVError(f"{self._name} is not installed ({self._reason}); reading and writing image files needs it")
