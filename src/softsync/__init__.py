"""softsync: staleness-aware asynchronous SGD with a parameter server (Zhang et al., IJCAI 2016)."""
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

__all__ = [
    "ConfigError", "Coordinator", "DataError", "DataServer", "RunDirError", "RunError", "SoftsyncError", "Learner", "MODELS", "POLICIES", "ParameterServer", "Protocol",
    "StalenessStats", "TrainConfig", "build_model", "gradients_per_update", "make_config",
    "parse_protocol", "register_model", "register_policy", "train",
]
