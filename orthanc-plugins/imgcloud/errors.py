"""The plugins' exception tree."""


class PluginError(Exception):
    """Base of every error raised by the imaging-cloud plugin code."""


class ConfigurationError(PluginError):
    """The plugin's section of the Orthanc configuration is missing or invalid."""


class ForwardingError(PluginError):
    """A study could not be sent to the central archive (the attempt will be retried)."""


class CompressorUnavailable(ForwardingError):
    """The edge's encoder processes cannot run: forwarding waits rather than send
    uncompressed what the rules say to compress."""


class CompressionError(PluginError):
    """An instance could not be compressed (it is forwarded and kept as received)."""


class ServiceCallError(PluginError):
    """A call to central or to this edge's own Orthanc failed or was refused.

    `status` is the HTTP status when the service answered, None when it did not.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CentralError(ServiceCallError):
    """Central did not answer, or refused a request (transfers are retried)."""


class LocalOrthancError(ServiceCallError):
    """This edge's own Orthanc REST API failed a request."""


class RetrievalError(PluginError):
    """A study could not be fetched from central or pulled from a PACS (retried)."""


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
