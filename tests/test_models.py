import pytest
import torch

from softsync.errors import ConfigError
from softsync.models import ALEXNET_MIN_SIDE, MODELS, build_model, count_parameters


def test_paper_cifar10_has_the_caffe_layout_size():
    assert count_parameters(build_model("paper-cifar10", (3, 32, 32), 10)) == 89_578


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"alexnet"}))  # alexnet needs 39×39 or more: tested below
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_classifies_both_input_shapes(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_alexnet_is_the_single_tower_caffe_network_on_227x227():
    model = build_model("alexnet", (3, 227, 227), 1000)
    assert count_parameters(model) == 62_378_344
    model.eval()  # dropout off: the output is a function of the input
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 227, 227)).shape == (2, 1000)


def test_alexnet_refuses_inputs_too_small_for_its_pooling():
    side = ALEXNET_MIN_SIDE
    with torch.no_grad():
        assert build_model("alexnet", (1, side, side + 5), 10)(torch.zeros(2, 1, side, side + 5)).shape == (2, 10)
    with pytest.raises(ConfigError, match=f"at least {side}×{side}, not 28×28"):
        build_model("alexnet", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=f"not {side - 1}×{side}"):
        build_model("alexnet", (3, side - 1, side), 10)


def test_seeded_initialisation_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = build_model("mlp", (1, 28, 28), 10, seed=7)
    after = torch.rand(1)
    b = build_model("mlp", (1, 28, 28), 10, seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_model_names_the_choices():
    with pytest.raises(ConfigError, match="cnn-small"):
        build_model("vgg", (1, 28, 28), 10)
