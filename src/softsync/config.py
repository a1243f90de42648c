"""The one config object every component reads, its validation, and TOML loading.

Field names are the CLI flags with dashes turned into underscores; a TOML config uses the
flag names (``batch-size = 16``). Validation raises ConfigError with one line that names the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import specs
from .corrections import CORRECTIONS
from .datasets import DATASETS
from .errors import ConfigError
from .learner import DEVICES, LOSSES
from .models import MODELS
from .protocol import Protocol, ProtocolError, parse_protocol
from .staleness import parse_policy

ENGINES = ("sim", "dist")
PATHS = ("data_dir", "out", "resume")
SPECS = ("model", "dataset", "loss")  # a built-in name or a reference (specs.py)

# Every float option must lie in its range, which also makes it finite. The bounds keep what is
# derived from the options finite (virtual time, samples/s, the learning-rate schedule), so that
# metrics.jsonl and summary.json stay valid JSON, and refuse values no run could mean.
MAX_LR = 1e6  # diverges at once (the divergence tests use it); a larger rate only diverges sooner
FLOAT_RANGES = {  # name: (low, high, (low included, high included), unit in the message)
    "lr": (0.0, MAX_LR, (False, True), ""),
    "momentum": (0.0, 1.0, (True, False), ""),
    "weight_decay": (0.0, 1.0, (True, True), ""),  # an L2 coefficient above 1 outweighs any loss
    "lr_gamma": (0.0, 1e3, (False, True), ""),
    "step_time": (1e-9, 1e6, (True, True), " virtual seconds"),  # a nanosecond to 11 days per gradient
    "step_jitter": (0.0, 1.0, (True, False), ""),
    "bandwidth": (1.0, 1e15, (True, True), " bytes per second"),  # 1 B/s to 1 PB/s
    "latency": (0.0, 1e6, (True, True), " seconds"),
    "server_update_time": (0.0, 1.0, (True, True), " seconds per parameter"),
    "server_answer_time": (0.0, 1.0, (True, True), " seconds per parameter"),
    "timeout": (0.0, 86400.0, (False, True), " seconds (at most a day)"),
    "dc_lambda": (0.0, 1e6, (True, True), ""),
}
# Whole numbers: torch and numpy take sizes and seeds as 64-bit integers.
INT64_MAX = 2**63 - 1
# λ: the sim keeps per learner a random stream (3 KB), a queued event and one gradient in flight,
# copied again into every checkpoint: 2 × 4 bytes per weight. At 1024 learners the largest built-in
# model (mlp on CIFAR-10, 395K weights) holds 3.2 GB of them, cnn-small 0.2 GB; the paper's largest
# λ is 30. The parameter server keeps per-learner state under either engine.
MAX_LEARNERS = 1024
MAX_SYNTHETIC_SIZE = 1_000_000  # 64 float32 pixels a sample: 320 MB with its test quarter
MAX_THREADS_PER_LEARNER = 256  # OMP_NUM_THREADS and torch.set_num_threads of every learner rank
# a learner of speed s computes 1/s as slowly; under dist a straggler sleeps (fastest/s - 1) × its
# compute time, so beyond a ratio of 1000 a run measures the sleeping, and 1e-300 overflows time.sleep
MIN_SPEED, MAX_SPEED, MAX_SPEED_RATIO = 1e-3, 1e3, 1e3


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """All hyperparameters of a run (defaults are the CLI's)."""

    engine: str = _opt("sim", "sim: deterministic discrete-event simulation in one process; dist: real processes")
    protocol: str = _opt(
        "1-softsync",
        "hardsync, async, or N-softsync (1 <= N <= learners): c = max(1, learners//N) gradients per update",
    )
    learners: int = _opt(
        4,
        "number of learners λ, at most 1024; a local dist launch starts λ+1 processes, which must also fit "
        "within ulimit -u and the available memory (about 100 MB each)",
    )
    batch_size: int = _opt(32, "mini-batch size μ per learner")
    lr: float = _opt(
        0.01, "base learning rate α0, in (0, 1e6]; every rate of the --lr-steps schedule must stay in that range"
    )
    lr_policy: str = _opt(
        "staleness",
        "α(τ): staleness (α0/τ, the paper's rule), constant (α0), mean (α0/n), poly:a=0.5 (α0/(1+τ)^a), "
        "exponential:beta=0.1 (α0·e^(−βτ)), adaptive:k=n (α0 while τ ≤ k, then α0·k/τ), "
        "drop:r=2n (α0 while τ < r, else the gradient is dropped and its mini-batch redone)",
    )
    correction: str = _opt(
        "none",
        "correct a stale gradient before its α(τ): none, dc-asgd (g + λ·g⊙g⊙(θ_t − θ_{t−τ})), dc-asgd-adaptive "
        "(λ/√MeanSquare), gap-aware (g ⊘ (1 + |θ_t − θ_{t−τ}|/C)); the server keeps θ_{t−τ} of gradients in flight",
    )
    dc_lambda: float = _opt(0.04, "--correction dc-asgd: λ (dc-asgd-adaptive: λ0; its paper used 2), in [0, 1e6]")
    ssp: int | None = _opt(
        None,
        "bounded staleness (n-softsync, async): a learner more than SSP pushes ahead of the slowest live learner "
        "waits for it before its next pull; 0 moves the learners in rounds (default: inf, unbounded)",
    )
    momentum_correction: bool = _opt(
        False, "reduce the server's momentum by the implicit momentum 1 − 1/⟨τ⟩ of asynchrony (never below 0)"
    )
    momentum: float = _opt(0.9, "SGD momentum on the server")
    weight_decay: float = _opt(0.0, "SGD weight decay (L2) on the server, in [0, 1]")
    lr_steps: tuple[int, ...] = _opt((), "epochs at which the learning rate is multiplied by --lr-gamma, e.g. 120,130")
    lr_gamma: float = _opt(0.1, "factor of each learning-rate step, in (0, 1000]")
    epochs: int = _opt(5, "epochs to train")
    dataset: str = _opt(
        "fashion-mnist",
        "fashion-mnist, mnist, cifar10, imagefolder, synthetic, or your own: package.module:callable or "
        "path/to/file.py:callable returning (train, test) map-style datasets of (input, target) items",
    )
    data_dir: str | None = _opt(
        None,
        "where the dataset files are: this directory or its <name>/ subdirectory, nowhere else "
        "(without it: $SOFTSYNC_DATA, then /usr/share/datasets/fashion-mnist for Fashion-MNIST)",
    )
    synthetic_size: int = _opt(
        2048, "training samples of the synthetic dataset, in [4, 1000000] (its test set is a quarter as many)"
    )
    model: str = _opt(
        "cnn-small",
        "paper-cifar10, cnn-small, cnn-bench, mlp, logreg, alexnet, or your own: package.module:callable or "
        "path/to/file.py:callable returning an nn.Module",
    )
    loss: str = _opt(
        "cross-entropy",
        "cross-entropy, mse, or your own: package.module:callable or path/to/file.py:callable, "
        "(output, target) -> the mean loss over the mini-batch",
    )
    seed: int = _opt(0, "seed of the weights, the data order and the simulated step times")
    out: str | None = _opt(None, "run directory (default: runs/<dataset>-<model>-<protocol>-l<λ>-b<μ>-s<seed>)")
    resume: str | None = _opt(None, "continue the run in this directory from its checkpoint")
    # the simulation's step-time model
    step_time: float = _opt(0.01, "sim: mean compute time of one mini-batch gradient, virtual seconds, in [1e-9, 1e6]")
    step_jitter: float = _opt(0.1, "sim: relative standard deviation of the compute time")
    learner_speeds: tuple[float, ...] = _opt(
        (),
        "relative speed of each learner, e.g. 1,1,0.5 (default all 1); each in [0.001, 1000], "
        "the fastest at most 1000 times the slowest",
    )
    bandwidth: float = _opt(
        1.25e9, "sim: parameter-server link bandwidth, bytes per second (shared by all transfers), in [1, 1e15]"
    )
    latency: float = _opt(5e-5, "sim: one-way message latency, seconds, in [0, 1e6]")
    message_bytes: int = _opt(
        0,
        "sim: bytes of one pull or push on the link (0: the model's float32 weights); "
        "models a bigger network's traffic",
    )
    servers: int = _opt(
        1,
        "sim: parameter-server shards S, in [1, 1024]: θ is split in S slices, each on a server with its own link "
        "and processor (the same arithmetic, S times the bandwidth and the server's speed); dist: 1 only, so far",
    )
    server_update_time: float = _opt(
        0.0,
        "sim: the server's seconds per parameter to apply an update (experiments/calibrate_speedup.py measures it); "
        "updates and answers queue on the server",
    )
    server_answer_time: float = _opt(
        0.0, "sim: the server's seconds per parameter to answer a pull (the copy of θ into the message)"
    )
    checkpoint_every: int = _opt(0, "also write checkpoint.pt after every K-th update (0: at epoch ends only)")
    # the dist engine
    host: str = _opt(
        "127.0.0.1",
        "dist: the address the server listens on for a local launch (gloo is unauthenticated: trusted networks only)",
    )
    timeout: float = _opt(
        120.0, "dist: seconds any blocking operation may wait before the run fails with an error naming the peer"
    )
    threads_per_learner: int = _opt(1, "dist: torch threads of each learner process, in [1, 256]")
    server_threads: int = _opt(
        1,
        "dist: torch threads of the server process (its updates, the copies of θ into answers, evaluation), "
        "in [1, 256]; give it the cores a server node has to spare",
    )
    device: str = _opt(
        "cpu",
        "cpu or cuda: where each learner computes (dist: learner k on GPU LOCAL_RANK or k, mod the GPUs; "
        "sim: one GPU); the server and evaluation stay on the CPU",
    )
    eval_samples: int = _opt(0, "evaluate on the first N test samples (0: the whole test set)")
    tensorboard: bool = _opt(
        False, "write TensorBoard event files to RUN_DIR/tensorboard/ (needs pip install 'softsync[tensorboard]')"
    )
    log_every: int = _opt(
        100, "--tensorboard: the interval, in updates, of the train/* scalars (samples/s, staleness, rejections), >= 1"
    )
    quiet: bool = _opt(False, "no progress bar")

    def resolved(self) -> dict:
        """The config as plain JSON-able values (for summary.json)."""
        values = dataclasses.asdict(self)
        values["lr_steps"] = list(self.lr_steps)
        values["learner_speeds"] = list(self.learner_speeds)
        return values

    def parsed_protocol(self) -> Protocol:
        return parse_protocol(self.protocol, self.learners)

    def default_out(self) -> str:
        dataset, model = specs.short_name(self.dataset), specs.short_name(self.model)
        return f"runs/{dataset}-{model}-{self.protocol}-l{self.learners}-b{self.batch_size}-s{self.seed}"


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


WHOLE = re.compile(r"[+-]?[0-9]+")
# decimal notation; inf and nan parse, and validate() refuses them with the option's range
REAL = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)


def whole_number(value) -> int:
    """``value`` as an int: an int, a float without a fraction, or plain digits (optionally signed).

    ValueError otherwise: ``int()`` alone would read "1_0" as 10, truncate 1.5 to 1 and accept
    non-ASCII digits. OverflowError beyond 64 bits, where torch and numpy would fail later.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and WHOLE.fullmatch(value):
        number = int(value)
    else:
        raise ValueError(value)
    if abs(number) > INT64_MAX:
        raise OverflowError(value)
    return number


def real_number(value) -> float:
    """``value`` as a float: an int, a float, or a number in decimal notation (no underscores); else ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)  # OverflowError for an int beyond any float
    if isinstance(value, str) and REAL.fullmatch(value):
        return float(value)
    raise ValueError(value)


def _number_list(value, kind, name: str, what: str) -> tuple:
    if isinstance(value, str):
        items = [item for item in value.replace(" ", "").split(",") if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        return tuple(kind(item) for item in items)
    except OverflowError:
        raise ConfigError(f"{name} = {value!r}: a value is too large (at most 2^63 - 1)") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: expected a comma-separated list of {what}") from None


def coerce(name: str, value):
    """Convert ``value`` (from a flag or a TOML file) to the type of field ``name``."""
    flag = "--" + name.replace("_", "-")
    if name not in FIELDS:
        raise ConfigError(f"unknown option {name.replace('_', '-')!r}: see 'softsync train --help'")
    default = FIELDS[name].default
    if name == "lr_steps":
        return _number_list(value, whole_number, flag, "whole numbers")
    if name == "learner_speeds":
        return _number_list(value, real_number, flag, "numbers")
    if name == "ssp":
        if (
            value is None
            or value == math.inf
            or (isinstance(value, str) and value.strip().lower() in ("inf", "infinity"))
        ):
            return None
        try:
            return whole_number(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{flag} = {value!r}: expected a whole number >= 0, or inf") from None
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{flag} needs a value")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{flag} = {value!r}: expected true or false")
    if isinstance(default, int):
        try:
            return whole_number(value)
        except OverflowError:
            raise ConfigError(f"{flag} = {value!r}: too large (at most 2^63 - 1)") from None
        except ValueError:
            raise ConfigError(f"{flag} = {value!r}: expected a whole number (plain digits)") from None
    if isinstance(default, float):
        try:
            return real_number(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{flag} = {value!r}: expected a number") from None
    if not isinstance(value, str):
        raise ConfigError(f"{flag} = {value!r}: expected a string")
    if name in PATHS:
        return os.path.expanduser(value)
    if name in SPECS:
        return specs.normalize(value)
    return value


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """The tables of a TOML file; ConfigError (one line) when it is missing or unparsable."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8; tomllib decodes the whole file first
        raise ConfigError(
            f"{what} {str(path)!r} cannot be read: it is not UTF-8 text (byte 0x{error.object[error.start]:02x} "
            f"at offset {error.start}); save it as UTF-8"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {error}") from None


def load_toml(path: str | Path) -> dict:
    """Read a config file whose keys are flag names; returns field-name -> coerced value."""
    raw = read_toml(path)
    return {key.replace("-", "_"): coerce(key.replace("-", "_"), value) for key, value in raw.items()}


def make_config(**values) -> TrainConfig:
    """A validated TrainConfig from field values (flag names with underscores)."""
    config = TrainConfig(**{name: coerce(name, value) for name, value in values.items()})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for the first value that is not allowed."""

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    require(0 <= config.seed < 2**31, f"--seed {config.seed}: must be in [0, 2^31)")
    require(config.engine in ENGINES, f"--engine {config.engine!r} is unknown: use sim or dist")
    require(config.learners >= 1, f"--learners {config.learners}: need at least 1 learner")
    require(
        config.learners <= MAX_LEARNERS,
        f"--learners {config.learners}: at most {MAX_LEARNERS} learners (each holds a gradient in flight)",
    )
    require(config.batch_size >= 1, f"--batch-size {config.batch_size}: need at least 1 sample per mini-batch")
    try:
        config.parsed_protocol()
    except ProtocolError as error:
        raise ConfigError(f"--protocol: {error}") from None
    parse_policy(config.lr_policy)
    require(
        config.correction in CORRECTIONS,
        f"--correction {config.correction!r} is unknown: use {', '.join(CORRECTIONS)}",
    )
    if config.ssp is not None:
        require(config.ssp >= 0, f"--ssp {config.ssp}: must be >= 0 (pushes ahead of the slowest learner), or inf")
        require(
            config.parsed_protocol().name != "hardsync",
            "--ssp bounds the staleness of n-softsync and async: hardsync's rounds already keep every learner together",
        )
    for name, (low, high, closed, unit) in FLOAT_RANGES.items():
        value = getattr(config, name)
        inside = (low <= value if closed[0] else low < value) and (value <= high if closed[1] else value < high)
        require(inside, f"--{name.replace('_', '-')} {value}: must be in {_interval(low, high, closed)}{unit}")
    require(
        all(step >= 1 for step in config.lr_steps),
        f"--lr-steps {','.join(map(str, config.lr_steps))}: epochs must be >= 1",
    )
    require(list(config.lr_steps) == sorted(set(config.lr_steps)), "--lr-steps: epochs must be increasing")
    require(
        _schedule_stays_in_range(config.lr, config.lr_gamma, len(config.lr_steps)),
        f"--lr-gamma {config.lr_gamma} over {len(config.lr_steps)} --lr-steps takes the learning rate {config.lr} "
        f"out of {_interval(0.0, MAX_LR, (False, True))}",
    )
    require(config.epochs >= 1, f"--epochs {config.epochs}: need at least 1 epoch")
    for name, builtins in (("dataset", DATASETS), ("model", sorted(MODELS)), ("loss", LOSSES)):
        spec = getattr(config, name)
        if specs.is_reference(spec):
            specs.split(spec, f"--{name}")  # its form; it is loaded when the run starts
        else:
            require(
                spec in builtins or specs.is_object(spec),
                f"--{name} {spec!r} is unknown: use {', '.join(builtins)}, or package.module:callable or "
                "path/to/file.py:callable",
            )
    require(config.synthetic_size >= 1, f"--synthetic-size {config.synthetic_size}: need at least 1 sample")
    require(
        config.synthetic_size <= MAX_SYNTHETIC_SIZE,
        f"--synthetic-size {config.synthetic_size}: at most {MAX_SYNTHETIC_SIZE} samples (they are held in memory)",
    )
    require(config.message_bytes >= 0, f"--message-bytes {config.message_bytes}: must be >= 0")
    require(1 <= config.servers <= MAX_LEARNERS, f"--servers {config.servers}: must be in [1, {MAX_LEARNERS}]")
    require(
        config.servers == 1 or config.engine == "sim",
        f"--servers {config.servers}: the dist engine runs one server process so far; the sim models S shards",
    )
    require(
        1 <= config.threads_per_learner <= MAX_THREADS_PER_LEARNER,
        f"--threads-per-learner {config.threads_per_learner}: must be in [1, {MAX_THREADS_PER_LEARNER}]",
    )
    # the name only: whether this machine has a GPU is checked by each process that computes on it, at its start
    # (learner.require_device): under torchrun a learner's node may have one where the launching node has none
    require(config.device in DEVICES, f"--device {config.device!r} is unknown: use cpu or cuda")
    require(bool(config.host.strip()), "--host: give an address, e.g. 127.0.0.1")
    require(
        1 <= config.server_threads <= MAX_THREADS_PER_LEARNER,
        f"--server-threads {config.server_threads}: must be in [1, {MAX_THREADS_PER_LEARNER}]",
    )
    require(config.checkpoint_every >= 0, f"--checkpoint-every {config.checkpoint_every}: must be >= 0")
    require(config.eval_samples >= 0, f"--eval-samples {config.eval_samples}: must be >= 0")
    require(config.log_every >= 1, f"--log-every {config.log_every}: must be >= 1 (updates between train/* scalars)")
    if config.learner_speeds:
        require(
            len(config.learner_speeds) == config.learners,
            f"--learner-speeds has {len(config.learner_speeds)} values: give one per learner ({config.learners})",
        )
        slowest, fastest = min(config.learner_speeds), max(config.learner_speeds)
        require(
            all(MIN_SPEED <= s <= MAX_SPEED for s in config.learner_speeds) and fastest <= MAX_SPEED_RATIO * slowest,
            f"--learner-speeds {','.join(map(str, config.learner_speeds))}: each speed must be in "
            f"[{MIN_SPEED:g}, {MAX_SPEED:g}] and the fastest at most {MAX_SPEED_RATIO:g} times the slowest",
        )


def _interval(low: float, high: float, closed: tuple[bool, bool]) -> str:
    return f"{'[' if closed[0] else '('}{_short(low)}, {_short(high)}{']' if closed[1] else ')'}"


def _short(number: float) -> str:
    """1e6 rather than 1e+06."""
    return f"{number:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def _schedule_stays_in_range(lr: float, gamma: float, steps: int) -> bool:
    """Every rate α0·γ^k (k = 0..steps) is a normal float in (0, MAX_LR]; in logarithms, as γ^k may overflow."""
    exponents = (math.log10(lr) + k * math.log10(gamma) for k in (0, steps))
    return all(math.log10(sys.float_info.min) < exponent <= math.log10(MAX_LR) for exponent in exponents)
