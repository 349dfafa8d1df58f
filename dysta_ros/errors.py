"""Typed errors the core raises; nodes catch them, hold, and report on /diagnostics."""


class DystaError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DystaError, ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class InputError(DystaError, ValueError):
    """An observation or message cannot be used (malformed, non-finite, stale, missing)."""


class CheckpointError(DystaError, ValueError):
    """A checkpoint directory is missing, corrupt, or does not match its config."""


class BagError(DystaError, ValueError):
    """A rosbag2 file cannot be read; the message names the file."""


class DatasetError(DystaError, ValueError):
    """A LeRobot dataset cannot be read or written; the message names the file."""


class InferenceError(DystaError, RuntimeError):
    """The model failed during a step (out of memory, device error); the step is dropped."""


class RenderError(DystaError, RuntimeError):
    """The simulator cannot render offscreen (no EGL/OSMesa); the message says what to install."""


# Exit statuses of `dysta-ros` (README "Exit codes"): 2 = the command line or a configuration
# value is wrong (nothing ran; argparse uses 2 as well), 1 = an input, checkpoint, bag or the
# model failed while running.
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def exit_status(exc: BaseException) -> int:
    """Return the process exit status for an error a command caught."""
    return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
