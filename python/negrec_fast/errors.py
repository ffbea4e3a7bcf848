"""Exception classes. Input errors come from the Rust core and name file, line and column."""

from negrec_fast._core import InputError, NegrecError


class ConfigError(NegrecError, ValueError):
    """A training/evaluation config is invalid: unknown key, wrong type or impossible value."""


__all__ = ["NegrecError", "InputError", "ConfigError"]
