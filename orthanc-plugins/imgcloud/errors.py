"""The plugins' exception tree."""


class PluginError(Exception):
    """Base of every error raised by the imaging-cloud plugin code."""


class ConfigurationError(PluginError):
    """The plugin's section of the Orthanc configuration is missing or invalid."""


class ForwardingError(PluginError):
    """A study could not be sent to the central archive (the attempt will be retried)."""
