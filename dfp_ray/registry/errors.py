"""Registry errors: each message says where and what to check."""

class RegistryError(RuntimeError):
    """A registry operation failed; the message says where and what to check."""


class RegistryUnavailableError(RegistryError):
    """The tracking/registry store cannot be reached or opened."""


class ModelLoadError(RegistryError):
    """A registered model version's artifacts could not be loaded (message names ``name:version``)."""

