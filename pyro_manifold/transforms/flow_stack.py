r"""The flow-stack factory: one builder for plain, conditional and batched-over-K flows.

:func:`flow_stack` returns the layers :math:`T_1, \dots, T_L` of a flow
:math:`x = T_L \circ \dots \circ T_1(u)` (Pyro's direction: base to data), as a
:class:`~torch.nn.ModuleList` to hand to a
:class:`~pyro.distributions.TransformedDistribution`. Every model of the package that
takes ``flow=`` builds its flows here, so a name means the same layer everywhere
(:data:`FLOWS`), and every model also takes the user's own flow: a callable that
returns Pyro transforms (see :func:`flow_stack`), for example a zuko flow wrapped by
:class:`~pyro_manifold.transforms.ZukoTransform`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import BatchNorm
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN, DenseNN
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from torch.distributions.utils import _sum_rightmost

from pyro_manifold._cache import FreshCache
from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError
from pyro_manifold.nn.batched import BatchedAutoRegressiveNN, BatchedDenseNN
from pyro_manifold.transforms.affine_coupling import AffineCoupling, ConditionalAffineCoupling
from pyro_manifold.transforms.masked_autoregressive import (
    ConditionalMaskedAutoregressive,
    MaskedAutoregressive,
)
from pyro_manifold.transforms.permutation import Reverse
from pyro_manifold.transforms.splines import (
    ConditionalSplineCoupling,
    FreshConditionalSplineAutoregressive,
    FreshSplineAutoregressive,
    FreshSplineCoupling,
    spline_param_dims,
)

__all__ = ["DEFAULT_FLOW", "FLOWS", "FlowFactory", "StackedFlows", "check_flow", "flow_stack"]

FLOWS = ("maf", "realnvp", "spline_autoregressive", "spline_coupling")
"""The layer families :func:`flow_stack` builds by name."""

DEFAULT_FLOW = "realnvp"
"""The default family of every model: both directions one pass, in every variant."""

FlowFactory = Callable[..., Transform | nn.Module | Iterable[nn.Module]]
"""A user's flow: ``flow(input_dim)`` (or ``flow(input_dim, context_dim)``) -> layers."""

_RENAMED = {
    "spline": (
        'the name "spline" meant three different layers and was split: use '
        '"spline_coupling" (what Flow, NoisyInjectiveFlow and VariationalMixtureOfFlows '
        'built) or "spline_autoregressive" (what VQFlow built)'
    )
}


def check_flow(name: str, flow: object) -> str | FlowFactory:
    """Check that ``flow`` is a name of :data:`FLOWS` or a callable that builds layers.

    The callable itself is checked when :func:`flow_stack` calls it (what it returns,
    and that the layers act on the model's dimension).

    Example:
        >>> check_flow("flow", "maf")
        'maf'
    """
    if isinstance(flow, str):
        if flow in _RENAMED:
            raise ArgumentError(
                f"{name}: expected one of {sorted(FLOWS)} or a callable; {_RENAMED[flow]}"
            )
        return check_choice(name, flow, FLOWS)
    if isinstance(flow, (nn.Module, Transform)) or not callable(flow):
        hint = (
            "; pass a function that builds it, e.g. lambda dim: ZukoTransform(...)"
            if isinstance(flow, (nn.Module, Transform))
            else ""
        )
        raise ArgumentTypeError(
            f"{name}: expected one of {sorted(FLOWS)} or a callable returning Pyro "
            f"TransformModules, got {type(flow).__name__}{hint}"
        )
    return flow


def _default_hidden(flow: str, input_dim: int) -> list[int]:
    if flow in ("maf", "spline_autoregressive"):
        return [max(10 * input_dim, 32)] if input_dim < 100 else [1024]
    return [max(10 * input_dim, 64)] * 2 if input_dim < 100 else [1024, 1024]


def _dense(
    in_dim: int, hidden: list[int], param_dims: list[int], context_dim: int | None, k: int | None
) -> nn.Module:
    if k is not None:
        return BatchedDenseNN(k, in_dim, hidden, param_dims=param_dims)
    if context_dim is not None:
        return ConditionalDenseNN(in_dim, context_dim, hidden, param_dims=param_dims)
    return DenseNN(in_dim, hidden, param_dims=param_dims)


def _autoregressive(
    dim: int,
    hidden: list[int],
    param_dims: list[int],
    order: Tensor,
    context_dim: int | None,
    k: int | None,
) -> nn.Module:
    if k is not None:
        return BatchedAutoRegressiveNN(k, dim, hidden, param_dims=param_dims, permutation=order)
    if context_dim is not None:
        return ConditionalAutoRegressiveNN(
            dim, context_dim, hidden, param_dims=param_dims, permutation=order
        )
    return AutoRegressiveNN(dim, hidden, param_dims=param_dims, permutation=order)


def _layer(
    flow: str,
    i: int,
    dim: int,
    hidden: list[int],
    context_dim: int | None,
    k: int | None,
    num_bins: int,
    bound: float,
) -> nn.Module:
    """Layer ``i`` of a stack: the order and the kept half alternate with ``i``."""
    odd = bool(i % 2)
    order = torch.arange(dim - 1, -1, -1) if odd else torch.arange(dim)
    if flow == "realnvp":
        kept = dim - dim // 2 if odd else dim // 2
        net = _dense(kept, hidden, [dim - kept] * 2, context_dim, k)
        coupling = AffineCoupling if context_dim is None else ConditionalAffineCoupling
        return coupling(kept, net, reverse=odd, input_dim=dim)
    if flow == "maf":
        net = _autoregressive(dim, hidden, [1, 1], order, context_dim, k)
        return (MaskedAutoregressive if context_dim is None else ConditionalMaskedAutoregressive)(
            net
        )
    if flow == "spline_autoregressive":
        net = _autoregressive(dim, hidden, spline_param_dims(num_bins), order, context_dim, k)
        if context_dim is None:
            return FreshSplineAutoregressive(dim, net, count_bins=num_bins, bound=bound)
        return FreshConditionalSplineAutoregressive(dim, net, count_bins=num_bins, bound=bound)
    split = dim // 2
    net = _dense(split, hidden, spline_param_dims(num_bins, dim - split), context_dim, k)
    if context_dim is not None:
        return ConditionalSplineCoupling(dim, split, net, num_bins, bound)
    layer = FreshSplineCoupling(
        dim, split, net, count_bins=num_bins, bound=bound, identity=k is not None
    )
    if k is not None:
        layer.lower_spline = None  # never used with identity=True; not shared by the K flows
    return layer


def flow_stack(
    input_dim: int,
    flow: str | FlowFactory = DEFAULT_FLOW,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    *,
    context_dim: int | None = None,
    num_components: int | None = None,
    batch_norm: bool = False,
    num_bins: int = 8,
    bound: float = 3.0,
    name: str = "flow",
) -> nn.ModuleList:
    r"""Build the layers of a flow on :math:`\mathbb R^D`, ordered base to data.

    .. math::

        x = T_L \circ \dots \circ T_1(u), \qquad
        \log\left|\det\frac{\partial x}{\partial u}\right|
            = \sum_{l=1}^{L} \log\left|\det\frac{\partial T_l}{\partial u_{l-1}}\right|.

    Three variants share one builder:

    * plain (default): ``TransformModule`` s on :math:`(*, D)`;
    * conditional (``context_dim=C``): ``ConditionalTransformModule`` s whose
      ``.condition(h)``, :math:`h` of shape :math:`(*, C)`, gives a plain transform;
    * batched (``num_components=K``): :math:`K` independent flows, each with its own
      weights, acting on :math:`(*, K, D)` (row :math:`k` through flow :math:`k`) in one
      pass of :math:`K`-stacked networks (``pyro_manifold.nn.batched``).

    Layer families (``flow``, :data:`FLOWS`), layer :math:`l` alternating the kept half
    or reversing the autoregressive order:

    * ``"realnvp"``: :class:`~pyro_manifold.transforms.AffineCoupling`; both directions
      are one pass.
    * ``"maf"``: :class:`~pyro_manifold.transforms.MaskedAutoregressive` (MAF
      direction): scoring data is one pass, sampling is sequential (:math:`D` passes).
    * ``"spline_coupling"``: a rational-quadratic spline coupling (Durkan et al. 2019)
      with :class:`~pyro_manifold.transforms.Reverse` between layers; both directions
      are one pass. The plain variant also moves the kept half by an element-wise
      spline (Pyro's ``SplineCoupling``); the conditional and batched variants keep it
      fixed (an unconditional element-wise spline would be shared by all contexts /
      components).
    * ``"spline_autoregressive"``: an autoregressive rational-quadratic spline in the
      IAF direction (Pyro's ``SplineAutoregressive``): sampling is one pass, scoring data
      is sequential (:math:`D` passes).

    Bring your own flow: ``flow`` may be a callable. It is called as ``flow(D)``
    (plain) or ``flow(D, C)`` (conditional) and returns one transform or an iterable of
    them, base to data: Pyro ``TransformModule`` s (``ConditionalTransformModule`` s when
    conditional), e.g. a zuko flow wrapped by
    :class:`~pyro_manifold.transforms.ZukoTransform`. ``num_layers``, ``hidden_dims``,
    ``num_bins`` and ``bound`` are then not used. With ``num_components=K`` it is called
    :math:`K` times and the :math:`K` flows run one after another inside a
    :class:`StackedFlows` (cost :math:`K` times one flow's, against about one wide flow's
    for a named family). The layers are checked once, in eval mode without gradients, on
    a :math:`(2, D)` tensor of zeros (data to base), so a wrong type or dimension fails
    here with the argument's name.

    Args:
        input_dim: :math:`D` (at least 2 for a named family).
        flow: a name of :data:`FLOWS` or a callable (see above).
        num_layers: :math:`L`.
        hidden_dims: hidden widths of each layer's network; default
            ``[max(10 D, 32)]`` for the autoregressive families (widths at least
            :math:`D`), ``[max(10 D, 64)] * 2`` for the couplings (``[1024]`` /
            ``[1024, 1024]`` for :math:`D \ge 100`).
        context_dim: :math:`C`, for a conditional stack.
        num_components: :math:`K`, for a batched stack (not with ``context_dim``).
        batch_norm: Pyro's :class:`~pyro.distributions.transforms.BatchNorm` between
            layers (plain named stacks only; call ``.eval()`` before evaluating).
        num_bins: spline bins (spline families), at least 2.
        bound: half-width of the splines' interval (spline families).
        name: the argument's name in error messages (e.g. ``"top_flow"``).

    Returns:
        A :class:`~torch.nn.ModuleList` of the layers, base to data.

    Raises:
        ValueError: an unknown name (the old ``"spline"`` names its two successors), bad
            sizes, or layers that do not act on :math:`(*, D)`.
        TypeError: ``flow`` neither a name nor a callable, or a callable that does not
            return Pyro ``TransformModule`` s (``ConditionalTransformModule`` s).

    Example:
        >>> [type(t).__name__ for t in flow_stack(3, "realnvp", 2, batch_norm=True)]
        ['AffineCoupling', 'BatchNorm', 'AffineCoupling']
        >>> layers = flow_stack(2, "spline_coupling", 2, [8], num_components=3)
        >>> u = torch.randn(5, 3, 2)
        >>> x = layers[2](layers[1](layers[0](u)))
        >>> torch.allclose(layers[0].inv(layers[1].inv(layers[2].inv(x))), u, atol=1e-5)
        True
        >>> from pyro_manifold.transforms import conditional_affine_coupling
        >>> own = flow_stack(2, lambda d, c: conditional_affine_coupling(d, c, [8]), context_dim=4)
        >>> own[0].condition(torch.randn(4))(torch.randn(5, 2)).shape
        torch.Size([5, 2])

    References:
        Masked Autoregressive Flow for Density Estimation. George Papamakarios, Theo
        Pavlakou, Iain Murray, 2017. arXiv:1705.07057.
        Density estimation using Real NVP. Laurent Dinh, Jascha Sohl-Dickstein, Samy
        Bengio, 2017. arXiv:1605.08803.
        Neural Spline Flows. Conor Durkan, Artur Bekasov, Iain Murray, George
        Papamakarios, 2019. arXiv:1906.04032.
    """
    flow = check_flow(name, flow)
    check_bool("batch_norm", batch_norm)
    named = isinstance(flow, str)
    input_dim = check_positive_int("input_dim", input_dim, minimum=2 if named else 1)
    if context_dim is not None:
        context_dim = check_positive_int("context_dim", context_dim)
    if num_components is not None:
        num_components = check_positive_int("num_components", num_components)
        if context_dim is not None:
            raise ArgumentError(
                f"num_components: expected None with context_dim={context_dim} (a stack is "
                f"conditional or batched, not both), got {num_components}"
            )
    if batch_norm and (not named or context_dim is not None or num_components is not None):
        raise ArgumentError(
            "batch_norm: only between the layers of a plain named stack; put BatchNorm in "
            "your own flow, got batch_norm=True with "
            + ("a callable flow" if not named else "context_dim / num_components")
        )
    if not named:
        if num_components is None:
            return nn.ModuleList(_own_layers(flow, input_dim, context_dim, name))
        flows = [_own_layers(flow, input_dim, None, name) for _ in range(num_components)]
        return nn.ModuleList([StackedFlows(flows)])
    check_positive_int("num_layers", num_layers)
    check_positive_int("num_bins", num_bins, minimum=2)
    bound = check_positive("bound", bound)
    autoregressive = flow in ("maf", "spline_autoregressive")
    hidden = _default_hidden(flow, input_dim) if hidden_dims is None else hidden_dims
    hidden = check_widths("hidden_dims", hidden, minimum=input_dim if autoregressive else 1)
    layers: list[nn.Module] = []
    for i in range(num_layers):
        if i > 0 and batch_norm:
            layers.append(BatchNorm(input_dim))
        if i > 0 and flow == "spline_coupling":
            layers.append(Reverse())
        layers.append(
            _layer(flow, i, input_dim, hidden, context_dim, num_components, num_bins, bound)
        )
    return nn.ModuleList(layers)


def _own_layers(
    flow: FlowFactory, input_dim: int, context_dim: int | None, name: str
) -> list[nn.Module]:
    """Call a user's flow, check what it returned and that it acts on :math:`(*, D)`."""
    call = f"{name}({input_dim})" if context_dim is None else f"{name}({input_dim}, {context_dim})"
    out = flow(input_dim) if context_dim is None else flow(input_dim, context_dim)
    single = isinstance(out, (Transform, ConditionalTransformModule)) or not isinstance(
        out, Iterable
    )
    layers = [out] if single else list(out)
    expected = TransformModule if context_dim is None else ConditionalTransformModule
    if not layers:
        raise ArgumentError(f"{name}: expected {call} to return at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, expected):
            zuko = type(layer).__module__.split(".")[0] == "zuko"
            hint = "; wrap a zuko flow: ZukoTransform(flow)" if zuko else ""
            if zuko and context_dim is not None:
                hint = "; wrap a zuko flow: ConditionalZukoTransform(flow)"
            raise ArgumentTypeError(
                f"{name}: expected {call} to return Pyro {expected.__name__}s (the model "
                f"{'conditions on a context' if context_dim else 'has no context'}), got "
                f"{type(layer).__name__} at position {i}{hint}"
            )
    _check_acts_on(layers, input_dim, context_dim, name, call)
    for layer in layers:  # Pyro's own layers key their cache on tensor identity alone:
        if isinstance(layer, Transform) and not isinstance(layer, FreshCache):
            layer._cache_size = 0  # never serve a result from before an optimiser step
    return layers


def _check_acts_on(
    layers: list[nn.Module], input_dim: int, context_dim: int | None, name: str, call: str
) -> None:
    """Run the layers data to base on zeros of shape :math:`(2, D)` (eval mode, no grad)."""
    reference = next((p for layer in layers for p in layer.parameters()), None)
    like = {} if reference is None else {"dtype": reference.dtype, "device": reference.device}
    x = torch.zeros(2, input_dim, **like)
    context = None if context_dim is None else torch.zeros(2, context_dim, **like)
    modes = [(m, m.training) for layer in layers for m in layer.modules()]
    position = len(layers) - 1
    try:
        with torch.no_grad():
            for layer in layers:
                layer.eval()
            for position in reversed(range(len(layers))):
                layer = layers[position]
                t = layer if context is None else layer.condition(context)
                u = t.inv(x)
                event_dim = getattr(getattr(t, "domain", None), "event_dim", 1)
                ladj = _sum_rightmost(t.log_abs_det_jacobian(u, x), 1 - event_dim)
                if u.shape != x.shape or torch.broadcast_shapes(ladj.shape, (2,)) != (2,):
                    raise ArgumentError(
                        f"it gave an output of shape {tuple(u.shape)} and a log-determinant "
                        f"of shape {tuple(ladj.shape)}"
                    )
                x = u
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise ArgumentError(
            f"{name}: expected the layers of {call} to act on tensors of shape (*, {input_dim}), "
            f"but layer {position} ({type(layers[position]).__name__}), inverted on zeros of "
            f"shape (2, {input_dim}): {type(e).__name__}: {e}"
        ) from e
    finally:
        for m, training in modes:
            m.training = training


class StackedFlows(FreshCache, TransformModule):
    r""":math:`K` separate flows on :math:`(*, K, D)`: row :math:`k` goes through flow :math:`k`.

    .. math::

        x_{\dots k} = T^{(k)}(u_{\dots k}), \qquad
        \log\left|\det\frac{\partial x_{\dots k}}{\partial u_{\dots k}}\right|
            \ \text{of shape}\ (*, K).

    How a user's flow becomes the :math:`K` components of a mixture
    (:func:`flow_stack` with ``num_components``): the flows run one after another, so a
    pass costs :math:`K` passes of one flow (the named families instead run the
    :math:`K` flows as one batched pass). An input with a size-1 component dimension,
    :math:`(*, 1, D)`, is shared by the :math:`K` flows. Each direction costs what it
    costs the flows.

    Args:
        flows: :math:`K` sequences of ``TransformModule`` s on :math:`(*, D)`, base to
            data.

    Example:
        >>> from pyro_manifold.transforms import affine_coupling
        >>> t = StackedFlows([[affine_coupling(2, [8])] for _ in range(3)])
        >>> u = torch.randn(5, 3, 2)
        >>> x = t(u)
        >>> t.log_abs_det_jacobian(u, x).shape, torch.allclose(t.inv(x.clone()), u, atol=1e-5)
        (torch.Size([5, 3]), True)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    _cache_slots = ("_cached_x_y", "_ladj_cache")

    def __init__(self, flows: Sequence[Sequence[TransformModule]]) -> None:
        super().__init__(cache_size=1)
        self.flows = nn.ModuleList(nn.ModuleList(f) for f in flows)
        if not len(self.flows):
            raise ArgumentError("flows: expected at least one flow, got none")
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _pass(self, z: Tensor, forward: bool) -> Tensor:
        k = len(self.flows)
        check_input("u" if forward else "x", z, min_dim=2, nonempty=False)
        if z.shape[-2] not in (1, k):
            raise ArgumentError(
                f"{'u' if forward else 'x'}: expected shape (*, {k}, D) or (*, 1, D), got "
                f"{tuple(z.shape)}"
            )
        rows = z.expand(*z.shape[:-2], k, z.shape[-1])
        outputs, ladjs = [], []
        for j, flow in enumerate(self.flows):
            h, ladj = rows[..., j, :], 0
            for t in flow if forward else reversed(flow):
                out = t(h) if forward else t.inv(h)
                u, x = (h, out) if forward else (out, h)
                ladj = ladj + _sum_rightmost(t.log_abs_det_jacobian(u, x), 1 - t.domain.event_dim)
                h = out
            outputs.append(h)
            ladjs.append(ladj.expand(h.shape[:-1]))
        result, ladj = torch.stack(outputs, -2), torch.stack(ladjs, -1)
        u, x = (z, result) if forward else (result, z)
        self._keep_log_det(u, x, ladj)
        return result

    def _call(self, u: Tensor) -> Tensor:
        return self._pass(u, forward=True)

    def _inverse(self, x: Tensor) -> Tensor:
        return self._pass(x, forward=False)

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        """Per-flow log-determinants, shape :math:`(*, K)`, shared with the last pass."""
        ladj = self._kept_log_det(u, x)
        if ladj is None:
            self._pass(u, forward=True)
            ladj = self._ladj_cache[2]
        return ladj
