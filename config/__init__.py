"""Settings and logging: the only things every other package may import."""

from config.logging import configure_logging
from config.settings import Settings, SettingsError, get_settings, load_settings

__all__ = ["Settings", "SettingsError", "configure_logging", "get_settings", "load_settings"]
