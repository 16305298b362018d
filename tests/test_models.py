"""The backbones' fast paths compute what the plain formulation computes (uda_core/models.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from uda_core.config import ModelConfig
from uda_core.models import DomainBatchNorm2d, build_model


def reference_domain_bn(m: DomainBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Per-domain statistics, then the shared affine as separate ops: the definition."""
    return m.bns[m.domain](x) * m.weight[None, :, None, None] + m.bias[None, :, None, None]


class ActivationOps(TorchFunctionMode):
    """Records the torch functions that return a tensor of the input's shape (one pass over the activations)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.names = shape, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.shape == self.shape:
            self.names.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("mode, momentum", [("train", 0.1), ("train", None), ("eval", 0.1)])
def test_domain_batch_norm_matches_the_definition(mode, momentum):
    torch.manual_seed(0)
    fast = DomainBatchNorm2d(6)
    with torch.no_grad():
        fast.weight.uniform_(0.5, 2.0)
        fast.bias.uniform_(-1.0, 1.0)
        fast.bns[1].running_mean.uniform_(-1.0, 1.0)  # eval mode normalises with these
        fast.bns[1].running_var.uniform_(0.5, 2.0)
    ref = copy.deepcopy(fast)
    for m in (fast, ref):
        m.train(mode == "train")
        m.domain = 1
        for bn in m.bns:
            bn.momentum = momentum  # None: the cumulative average reestimate_bn uses
    for _ in range(3):  # a few batches: running statistics and the batch counter accumulate
        x = torch.randn(8, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        g = torch.randn(8, 6, 5, 5)
        y, y_ref = fast(x), reference_domain_bn(ref, x_ref)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad)
    state, state_ref = fast.state_dict(), ref.state_dict()
    assert state.keys() == state_ref.keys()  # checkpoints load either way
    for k in state:
        torch.testing.assert_close(state[k], state_ref[k], msg=k)
    assert int(state["bns.0.num_batches_tracked"]) == 0  # the other domain's statistics are untouched


def test_domain_batch_norm_is_one_pass_over_the_activations():
    m = DomainBatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    with ActivationOps(x.shape) as ops:
        m(x)
    assert ops.names == ["batch_norm"]  # normalise, scale and shift in one kernel, not three passes


def test_cnn_pools_before_relu_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="cnn", width=8, depth=3, feature_dim=16, domain_bn=True), 3, 4)
    layers = list(model.backbone)
    kinds = [type(layer).__name__ for layer in layers]
    # ReLU after the pool (on a quarter of the values); the parameter-carrying layers keep their indices, so
    # checkpoints of the former ReLU-then-pool order load unchanged.
    assert kinds[:5] == ["Conv2d", "DomainBatchNorm2d", "MaxPool2d", "ReLU", "Conv2d"]
    relu_first = copy.deepcopy(model)
    for i, kind in enumerate(kinds):
        if kind == "MaxPool2d":
            relu_first.backbone[i], relu_first.backbone[i + 1] = nn.ReLU(inplace=True), nn.MaxPool2d(2)
    x = torch.randn(4, 3, 16, 16)
    outs = []
    for m in (model, relu_first):
        h, _ = m(x, 1)
        h.square().sum().backward()
        outs.append((h, [p.grad for p in m.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    for g, g_ref in zip(outs[0][1], outs[1][1]):
        assert torch.equal(g, g_ref)
