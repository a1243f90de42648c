"""softsync: staleness-aware asynchronous SGD with a parameter server (Zhang et al., IJCAI 2016)."""

import sys
from pathlib import Path


def _is_the_command() -> bool:
    """True in the `softsync` command and in `python -m softsync...` processes; False in a program using the library."""
    argv = getattr(sys, "orig_argv", sys.argv)
    by_module = "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("softsync")
    return Path(sys.argv[0]).name == "softsync" or by_module


try:  # importing torch takes seconds: a Ctrl-C then ends the command with one line, as it does later
    from .config import TrainConfig, make_config
    from .coordinator import Coordinator
    from .data import DataServer
    from .errors import ConfigError, DataError, RunDirError, RunError, SoftsyncError
    from .learner import Learner
    from .models import MODELS, build_model, register_model
    from .protocol import Protocol, gradients_per_update, parse_protocol
    from .server import ParameterServer
    from .staleness import POLICIES, StalenessStats, register_policy
    from .train import train
except KeyboardInterrupt as interrupt:
    if not _is_the_command():
        raise
    from .errors import report

    raise SystemExit(report(interrupt)) from None

__all__ = [
    "ConfigError",
    "Coordinator",
    "DataError",
    "DataServer",
    "RunDirError",
    "RunError",
    "SoftsyncError",
    "Learner",
    "MODELS",
    "POLICIES",
    "ParameterServer",
    "Protocol",
    "StalenessStats",
    "TrainConfig",
    "build_model",
    "gradients_per_update",
    "make_config",
    "parse_protocol",
    "register_model",
    "register_policy",
    "train",
]
