"""The one exception the data package raises for bad datasets."""


class DatasetError(ValueError):
    """A dataset file or record is invalid; the message names the file, the record and the fix."""
