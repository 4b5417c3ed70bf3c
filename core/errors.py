"""Error types that carry a one-line, user-facing reason.

Serving code turns them into 4xx answers, CLIs into a one-line message and a non-zero exit.
"""


class UserInputError(ValueError):
    """Input the caller can fix (bad image, unknown distortion, missing file): say why, in one line."""


class ImageDecodeError(UserInputError):
    """The bytes are not an image we accept, or the image is too large."""


class UnknownDistortionError(UserInputError, KeyError):
    """A distortion type or level that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
