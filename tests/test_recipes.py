import pytest
import torch
from torch import nn

from kdlens.config import RecipeConfig
from kdlens.training.recipes import build_optimizer, lr_factor, parameter_groups


def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_norm_and_bias_parameters_skip_weight_decay_only_when_asked():
    net = small_net()
    groups = parameter_groups([net], RecipeConfig(no_decay_norm_bias=True))
    decay = {id(p) for p in groups[0]["params"]}
    exempt = {id(p) for p in groups[1]["params"]}
    assert decay == {id(net[0].weight), id(net[3].weight)}
    assert exempt == {id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert groups[1]["weight_decay"] == 0.0
    assert len(parameter_groups([net], RecipeConfig())) == 1


def test_optimisers_of_the_recipes():
    groups = parameter_groups([small_net()], RecipeConfig())
    sgd = build_optimizer(groups, RecipeConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    radam = build_optimizer(parameter_groups([small_net()], RecipeConfig()), RecipeConfig(optimizer={"name": "radam", "lr": 3e-3}))
    assert isinstance(radam, torch.optim.RAdam) and radam.defaults["lr"] == 3e-3


def test_step_schedule_drops_at_milestone_epochs():
    factor = lr_factor(RecipeConfig(epochs=240), steps_per_epoch=10)
    assert factor(0) == 1.0 and factor(1499) == 1.0
    assert factor(1500) == pytest.approx(0.1)
    assert factor(1800) == pytest.approx(0.01)
    assert factor(2100) == pytest.approx(0.001)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    recipe = RecipeConfig(epochs=10, schedule={"name": "cosine", "warmup_epochs": 2})
    factor = lr_factor(recipe, steps_per_epoch=5)
    assert factor(0) == pytest.approx(0.1) and factor(4) == pytest.approx(0.5) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(30) == pytest.approx(0.5)
    assert factor(49) < 0.01


def test_linear_lr_scaling_only_when_the_config_states_it():
    assert build_optimizer(parameter_groups([small_net()], RecipeConfig()), RecipeConfig(), global_batch=256).defaults["lr"] == 0.05
    scaled = RecipeConfig(lr_reference_batch=64)
    assert build_optimizer(parameter_groups([small_net()], scaled), scaled, global_batch=256).defaults["lr"] == pytest.approx(0.2)
