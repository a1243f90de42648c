"""A user's own model, data and loss, as a plain file: the tests copy it beside their runs and name it by reference.

Nothing here is installed or on sys.path: softsync must find it by its path.
"""

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

FEATURES, CLASSES, SAMPLES = 6, 3, 480


class Points(Dataset):
    """A plain map-style dataset: softsync collates its items one by one."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def _points(regression: bool = False):
    generator = torch.Generator().manual_seed(11)  # every process builds the same data
    x = torch.randn(SAMPLES + SAMPLES // 4, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    y = (x @ teacher)[:, :1] if regression else (x @ teacher).argmax(1)
    return x, y


def make_data():
    x, y = _points()
    return Points(x[:SAMPLES], y[:SAMPLES]), Points(x[SAMPLES:], y[SAMPLES:])


def make_tensor_data():
    """The same data as make_data, as TensorDatasets (softsync indexes them at once)."""
    x, y = _points()
    return TensorDataset(x[:SAMPLES], y[:SAMPLES]), TensorDataset(x[SAMPLES:], y[SAMPLES:])


def make_regression_data():
    x, y = _points(regression=True)
    return Points(x[:SAMPLES], y[:SAMPLES]), Points(x[SAMPLES:], y[SAMPLES:])


def make_model():
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))


def make_dropout_model():
    """A model that draws random numbers in its forward pass."""
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, CLASSES))


def make_regressor():
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def smooth_loss(output, target):
    """Cross-entropy with label smoothing: a loss softsync does not know by name."""
    return nn.functional.cross_entropy(output, target, label_smoothing=0.1)


# what the bad-spec tests point at
NOT_CALLABLE = 42


def returns_a_string():
    return "not a model"


def returns_one_split():
    return make_data()[0]


def returns_unpaired_items():
    return [torch.zeros(3)] * 8, [torch.zeros(3)] * 4


def returns_ragged_items():
    items = [(torch.zeros(1 + index % 2), 0) for index in range(8)]
    return items, items


def raises():
    raise RuntimeError("the factory failed")


def wrong_width_model():
    return nn.Linear(FEATURES + 1, CLASSES)


def per_sample_loss(output, target):
    return nn.functional.cross_entropy(output, target, reduction="none")
