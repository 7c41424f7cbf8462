"""The runner's error for settings that cannot work (exit status 2)."""


class SettingsError(ValueError):
    """Settings that cannot work with this data or results folder (the runner: exit 2)."""
