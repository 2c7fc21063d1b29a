"""The one error type for configuration a user gave us (bootstrap, LDS resources, flags)."""


class ConfigError(Exception):
    """A one-line `FIELD_PATH: reason` message, shown to the user as it is."""
