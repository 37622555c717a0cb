r"""Initialisation helpers for the networks inside flow layers."""

from __future__ import annotations

import torch
from torch import nn

from pyro_manifold._validation import check_positive
from pyro_manifold.errors import ArgumentTypeError

__all__ = ["scale_output_layer"]


def scale_output_layer(net: nn.Module, factor: float = 0.01) -> nn.Module:
    r"""Multiply the weights and bias of ``net.layers[-1]`` by ``factor``, in place.

    For the networks of Pyro and of this package (``DenseNN``, ``ConditionalDenseNN``,
    the autoregressive networks), whose last layer produces the flow layer's parameters:
    with a small factor the outputs start near zero, so an affine layer
    :math:`x = \mu + \sigma\odot u` with :math:`\sigma = \operatorname{softplus}(s + c)`
    starts near the identity (:math:`\mu \approx 0`, :math:`\sigma \approx 1`) and a deep
    stack starts with a log-determinant near zero instead of one that can reach
    :math:`\pm 10^{3}` per layer on data of large range. Returns ``net``.

    Example:
        >>> from pyro.nn import DenseNN
        >>> net = scale_output_layer(DenseNN(3, [8], param_dims=[2]), 0.0)
        >>> net(torch.randn(4, 3)).abs().max().item()
        0.0
    """
    check_positive("factor", factor, allow_zero=True)
    layers = getattr(net, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ArgumentTypeError(
            f"net: expected a network with a non-empty `layers` ModuleList, got "
            f"{type(net).__name__}"
        )
    with torch.no_grad():
        for p in layers[-1].parameters():
            p.mul_(factor)
    return net
