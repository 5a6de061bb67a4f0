"""The project's own exception types. Every message is meant to be shown to a user as is."""


class SpadeError(Exception):
    """Base class of every error the library raises on purpose."""


class ImageLoadError(SpadeError):
    """An image could not be read or is refused (corrupt, too large, too small, not an image)."""


class CheckpointError(SpadeError):
    """A checkpoint could not be loaded or does not fit the chosen architecture."""


class CheckpointTimeoutError(CheckpointError):
    """A TorchScript file's loading or forward pass did not finish within its time limit (it was stopped); the
    same file may pass on a less busy machine."""


class WeightsUnavailableError(SpadeError):
    """Pretrained weights are not available offline and no download was asked for."""


class ConfigError(SpadeError, ValueError):
    """A setting (sparsity, profile, augmentation, device, ...) is invalid."""
