"""User-facing errors: each says what is wrong and how to fix it."""


class HarnessError(Exception):
    """An error caused by input (files, names, options) that the user can fix.

    The CLI prints these as one clear message without a traceback.
    """


class DataError(HarnessError):
    """A data file is missing or does not have the expected layout."""


class SampleError(HarnessError):
    """One sample cannot be evaluated (unreadable media, no prediction for it):
    it is recorded with the reason and counted wrong; the run goes on."""


class MediaError(SampleError):
    """One media item (image, video) could not be read."""
