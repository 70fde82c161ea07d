"""User-facing errors: each one is a single clear line for the terminal."""


class HarnessError(Exception):
    """A problem the user can fix; its message is printed as one line, with a non-zero exit."""


class SourceError(HarnessError):
    """The named data source is missing, empty, unreadable or too small."""


class NotPreparedError(HarnessError):
    """No complete prepared dataset exists in the cache."""


class IntegrityError(HarnessError):
    """A harness file or a prepared data file no longer matches its recorded hash."""
