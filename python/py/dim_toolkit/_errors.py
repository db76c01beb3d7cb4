"""The exceptions dim_toolkit raises; their messages are the command-line tools' messages."""


class DimToolkitError(Exception):
    """Base class of every error the toolkit reports (files, index directories, jobs)."""


class ModelError(DimToolkitError):
    """The model cannot be loaded, is not a DIM export, or lacks the requested output."""


class ImageError(DimToolkitError):
    """An image could not be embedded (raised when ``on_error="raise"``)."""


class DimensionError(DimToolkitError, ValueError):
    """Vectors, queries or images whose shape does not fit the model or the index."""


class TrainingError(DimToolkitError):
    """dim-train could not be found, or it stopped with an error."""
