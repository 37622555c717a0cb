r"""Networks for :math:`K` independent components evaluated as one batched computation.

A batched network holds :math:`K` sets of weights stacked on a leading dimension and maps
an input of shape :math:`(*, K, d_\text{in})` to :math:`(*, K, d_\text{out})`, row
:math:`k` going through network :math:`k`. One ``einsum`` (a batched matrix product) per
layer replaces a Python loop over :math:`K` modules, so :math:`K` flows cost about as
much as one wide flow. An input with a size-1 component dimension, :math:`(*, 1, d)`, is
shared by all :math:`K` networks.

The output layouts are those of Pyro's :class:`~pyro.nn.DenseNN` and
:class:`~pyro.nn.AutoRegressiveNN`, so that the existing transforms
(:class:`~pyro_manifold.transforms.AffineCoupling`,
:class:`~pyro_manifold.transforms.MaskedAutoregressive`, Pyro's spline couplings) run
:math:`K` component flows at once when given a batched network as their hypernetwork:
component :math:`k` with the weights ``net.layers[i].weight[k]`` computes exactly what a
single Pyro network with those weights computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pyro.nn.auto_reg_nn import create_mask
from torch import Tensor, nn

from pyro_manifold._validation import (
    check_bool,
    check_input,
    check_positive_int,
    check_tensor,
    check_widths,
)
from pyro_manifold.errors import ArgumentError

__all__ = ["BatchedAutoRegressiveNN", "BatchedDenseNN", "BatchedLinear"]


class BatchedLinear(nn.Module):
    r"""``K`` affine maps applied row-wise: :math:`y_{\dots k} = W_k x_{\dots k} + b_k`.

    .. math::

        y_{n k o} = \sum_i W_{k o i}\, (M \odot)\, x_{n k i} + b_{k o},

    with an optional fixed 0/1 mask :math:`M` of shape :math:`(d_\text{out}, d_\text{in})`
    shared by the :math:`K` components (MADE's masks). Every component is initialised
    like :class:`torch.nn.Linear`: weights and biases uniform in
    :math:`\pm 1/\sqrt{d_\text{in}}`.

    Args:
        num_components: :math:`K`.
        in_features: :math:`d_\text{in}`.
        out_features: :math:`d_\text{out}`.
        bias: learn the biases :math:`b_k`.
        mask: optional :math:`(d_\text{out}, d_\text{in})` mask, stored as a buffer.

    Shapes: input :math:`(*, K, d_\text{in})`, or :math:`(*, 1, d_\text{in})` or an
    ``expand`` of it (one row shared by all components, multiplied once against the
    stacked weights); output :math:`(*, K, d_\text{out})`.

    Example:
        >>> layer = BatchedLinear(3, 4, 2)
        >>> layer(torch.randn(5, 3, 4)).shape
        torch.Size([5, 3, 2])
        >>> x = torch.randn(4)
        >>> torch.allclose(layer(x.expand(1, 4))[1], layer.weight[1] @ x + layer.bias[1])
        True
    """

    def __init__(
        self,
        num_components: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_components = check_positive_int("num_components", num_components)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        check_bool("bias", bias)
        self.weight = nn.Parameter(torch.empty(num_components, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_components, out_features)) if bias else None
        if mask is not None:
            check_tensor("mask", mask, event_shape=(out_features, in_features), floating=False)
            mask = mask.to(self.weight.dtype)
        self.register_buffer("mask", mask)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Draw every component's weights and biases uniformly in :math:`\pm 1/\sqrt{d_{in}}`."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Apply component ``k``'s map to ``x[..., k, :]``."""
        return self._product(self._check(x))

    def _check(self, x: Tensor) -> Tensor:
        """Shape, dtype and device of the input (no values: networks run in hot loops)."""
        check_input(
            "x", x, self.weight, min_dim=2, nonempty=False, finite=False, owner="the network's"
        )
        k, d = self.num_components, self.in_features
        if x.shape[-1] != d or x.shape[-2] not in (k, 1):
            raise ArgumentError(
                f"x: expected shape (*, {k}, {d}) or (*, 1, {d}), got tensor of shape "
                f"{tuple(x.shape)}"
            )
        return x

    def _product(self, x: Tensor) -> Tensor:
        """The product of :meth:`forward` without the input check (for inner layers)."""
        weight = self.weight if self.mask is None else self.weight * self.mask
        if self.num_components > 1 and (x.shape[-2] == 1 or x.stride(-2) == 0):
            # one input row shared by the K maps (size 1, or expanded): one matrix product
            y = torch.einsum("...i,koi->...ko", x.select(-2, 0), weight)
        else:
            y = torch.einsum("...ki,koi->...ko", x, weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        """Describe the layer's sizes in ``repr``."""
        return (
            f"num_components={self.num_components}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}, "
            f"masked={self.mask is not None}"
        )


def _check_dims(hidden_dims: Sequence[int], param_dims: Sequence[int]) -> tuple[list, list]:
    hidden, params = (
        check_widths("hidden_dims", hidden_dims),
        check_widths("param_dims", param_dims, allow_empty=True),
    )
    if len(params) == 0:
        raise ArgumentError("param_dims: expected at least one output block, got []")
    return hidden, params


def _run(layers: nn.ModuleList, f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The layers with ``f`` between them; only the first checks its input."""
    h = layers[0](x)
    for layer in layers[1:]:
        h = layer._product(f(h))
    return h


def _split_output(h: Tensor, param_dims: list[int]) -> Tensor | tuple[Tensor, ...]:
    if len(param_dims) == 1:
        return h
    return tuple(torch.split(h, param_dims, dim=-1))


class BatchedDenseNN(nn.Module):
    r"""``K`` fully connected networks :math:`x \mapsto (p_1, \dots, p_m)` in one pass.

    .. math::

        h^{(0)}_k = x_k,\quad h^{(l)}_k = f(W^{(l)}_k h^{(l-1)}_k + b^{(l)}_k),\quad
        (p_1, \dots, p_m)_k = W^{(L+1)}_k h^{(L)}_k + b^{(L+1)}_k,

    the batched twin of :class:`pyro.nn.DenseNN` (same output layout: the last layer's
    outputs are the ``param_dims`` blocks in order).

    Args:
        num_components: :math:`K`.
        input_dim: :math:`d_\text{in}`.
        hidden_dims: widths of the hidden layers.
        param_dims: sizes of the output blocks; one block returns a tensor, several a tuple.
        nonlinearity: the activation :math:`f` (a fresh :class:`torch.nn.ReLU` by default).

    Shapes: input :math:`(*, K, d_\text{in})` or :math:`(*, 1, d_\text{in})`; each output
    block :math:`(*, K, p_j)`.

    Example:
        >>> net = BatchedDenseNN(4, 2, [16], param_dims=[3, 3])
        >>> mu, s = net(torch.randn(10, 4, 2))
        >>> mu.shape, s.shape
        (torch.Size([10, 4, 3]), torch.Size([10, 4, 3]))
    """

    def __init__(
        self,
        num_components: int,
        input_dim: int,
        hidden_dims: Sequence[int],
        param_dims: Sequence[int] = (1, 1),
        nonlinearity: nn.Module | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_components", num_components)
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.hidden_dims, self.param_dims = _check_dims(hidden_dims, param_dims)
        self.num_components = num_components
        sizes = [input_dim, *self.hidden_dims, sum(self.param_dims)]
        self.layers = nn.ModuleList(
            BatchedLinear(num_components, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.f = nonlinearity if nonlinearity is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Return the output block(s), each :math:`(*, K, p_j)`."""
        return _split_output(_run(self.layers, self.f, x), self.param_dims)


class BatchedAutoRegressiveNN(nn.Module):
    r"""``K`` MADE networks (Germain et al. 2015) sharing one set of masks, in one pass.

    .. math::

        (p_1, \dots, p_m)_{k, i} \text{ depends only on } x_{k, \pi(1)}, \dots,
        x_{k, \pi(j-1)} \text{ where } i = \pi(j),

    for the autoregressive order :math:`\pi` (``permutation``). Masks are built by Pyro's
    :func:`~pyro.nn.auto_reg_nn.create_mask`, so component :math:`k` computes what a
    :class:`pyro.nn.AutoRegressiveNN` with the same permutation and weights computes; the
    output layout is the same (``param_dims`` blocks, each of :math:`D` values). Like
    Pyro's network it carries a ``permutation`` attribute, which
    :class:`~pyro_manifold.transforms.MaskedAutoregressive` reads to sample.

    Args:
        num_components: :math:`K`.
        input_dim: :math:`D`, at least 2.
        hidden_dims: hidden widths, each at least :math:`D`.
        param_dims: output multipliers, ``[1, 1]`` for a location and a scale.
        permutation: the order :math:`\pi` (a permutation of ``range(D)``); default
            the identity.
        nonlinearity: the activation (a fresh :class:`torch.nn.ReLU` by default).

    Shapes: input :math:`(*, K, D)` or :math:`(*, 1, D)`; each output
    :math:`(*, K, D)` when every ``param_dims`` entry is 1, else :math:`(*, K, p_j, D)`.

    Example:
        >>> net = BatchedAutoRegressiveNN(3, 4, [16])
        >>> x = torch.randn(5, 3, 4)
        >>> mu, s = net(x)
        >>> x2 = x.clone(); x2[..., 3] += 1.0  # the last coordinate feeds no output
        >>> torch.equal(net(x2)[0], mu)
        True

    References:
        MADE: Masked Autoencoder for Distribution Estimation. Mathieu Germain, Karol
        Gregor, Iain Murray, Hugo Larochelle, 2015. arXiv:1502.03509.
    """

    def __init__(
        self,
        num_components: int,
        input_dim: int,
        hidden_dims: Sequence[int],
        param_dims: Sequence[int] = (1, 1),
        permutation: Tensor | None = None,
        nonlinearity: nn.Module | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_components", num_components)
        self.input_dim = check_positive_int("input_dim", input_dim, minimum=2)
        self.hidden_dims, self.param_dims = _check_dims(hidden_dims, param_dims)
        for h in self.hidden_dims:
            check_positive_int("hidden_dims", h, minimum=input_dim)
        if permutation is None:
            permutation = torch.arange(input_dim)
        check_tensor("permutation", permutation, event_shape=(input_dim,), floating=False)
        permutation = permutation.to(torch.int64)
        if not torch.equal(permutation.sort().values, torch.arange(input_dim)):
            raise ArgumentError(
                f"permutation: expected a permutation of range({input_dim}), got "
                f"{permutation.tolist()}"
            )
        self.num_components = num_components
        self.register_buffer("permutation", permutation)
        multiplier = sum(self.param_dims)
        masks, _ = create_mask(input_dim, 0, self.hidden_dims, permutation, multiplier)
        sizes = [input_dim, *self.hidden_dims, input_dim * multiplier]
        self.layers = nn.ModuleList(
            BatchedLinear(num_components, a, b, mask=m)
            for a, b, m in zip(sizes[:-1], sizes[1:], masks, strict=True)
        )
        self.f = nonlinearity if nonlinearity is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Return the output block(s) for the :math:`K` components."""
        h = _run(self.layers, self.f, x)
        if sum(self.param_dims) == 1:
            return h
        h = h.reshape(*h.shape[:-1], sum(self.param_dims), self.input_dim)
        if len(self.param_dims) == 1:
            return h
        if all(p == 1 for p in self.param_dims):
            return tuple(h.unbind(-2))
        return tuple(torch.split(h, self.param_dims, dim=-2))
