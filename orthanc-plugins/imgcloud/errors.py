"""The plugins' exception tree."""


class PluginError(Exception):
    """Base of every error raised by the imaging-cloud plugin code."""


class ConfigurationError(PluginError):
    """The plugin's section of the Orthanc configuration is missing or invalid."""


class ForwardingError(PluginError):
    """A study could not be sent to the central archive (the attempt will be retried)."""


class StorageError(PluginError):
    """Base of storage-area failures (Orthanc answers the caller with an error)."""


class StorageUnavailable(StorageError):
    """The backend (S3 or disk) could not be reached or refused the request in time."""


class ObjectNotFound(StorageError):
    """No object for this attachment."""


class IntegrityError(StorageError):
    """An object is tampered, truncated, or sealed under a key we do not hold."""


class KeyRingError(ConfigurationError):
    """The master key ring is missing, unreadable or invalid."""
