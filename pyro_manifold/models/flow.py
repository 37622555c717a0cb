r"""The classic normalizing-flow density model: the "NF" baseline of every comparison."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import BatchNorm
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import check_choice, check_input, check_positive_int, check_widths
from pyro_manifold.transforms import Reverse, affine_coupling, masked_autoregressive
from pyro_manifold.transforms._cache import forget_cached
from pyro_manifold.transforms._spline_coupling import fresh_spline_coupling

__all__ = ["FLOWS", "Flow", "flow_layers"]

FLOWS = ("maf", "realnvp", "spline")


def flow_layers(
    data_dim: int,
    flow: str,
    num_layers: int,
    hidden_dims: list[int] | None = None,
    batch_norm: bool = False,
    num_bins: int = 8,
) -> list[nn.Module]:
    r"""The layers of a flow on :math:`\mathbb R^D`, ordered base to data (see :class:`Flow`).

    Example:
        >>> [type(t).__name__ for t in flow_layers(3, "realnvp", 2, batch_norm=True)]
        ['AffineCoupling', 'BatchNorm', 'AffineCoupling']
    """
    check_positive_int("data_dim", data_dim, minimum=2)
    check_choice("flow", flow, FLOWS)
    check_positive_int("num_layers", num_layers)
    check_positive_int("num_bins", num_bins)
    if hidden_dims is not None:
        hidden_dims = check_widths("hidden_dims", hidden_dims)
    reverse = torch.arange(data_dim - 1, -1, -1)
    layers: list[nn.Module] = []
    for i in range(num_layers):
        if i > 0 and batch_norm:
            layers.append(BatchNorm(data_dim))
        if flow == "maf":
            order = reverse if i % 2 else torch.arange(data_dim)
            layers.append(masked_autoregressive(data_dim, hidden_dims, permutation=order))
        elif flow == "realnvp":
            layers.append(affine_coupling(data_dim, hidden_dims, reverse=bool(i % 2)))
        else:
            if i > 0:
                layers.append(Reverse())
            layers.append(fresh_spline_coupling(data_dim, hidden_dims, count_bins=num_bins))
    return layers


class Flow(PyroModule):
    r"""A normalizing flow :math:`x = T(u)`, :math:`u \sim \mathcal N(0, I_D)`, as a Pyro program.

    .. math::

        \log p(x) = \log \mathcal N(T^{-1}(x); 0, I)
            - \sum_{l=1}^{L} \log\left|\det \frac{\partial T_l}{\partial u_{l-1}}\right|.

    ``model(x)`` observes ``x`` (shape :math:`(N, D)`) under a ``pyro.plate("data")``;
    ``guide(x)`` is empty (there are no latent sites), so any Pyro ELBO equals
    :math:`-\sum_n \log p(x_n)` and training maximises the likelihood.

    Layers (``flow``):

    * ``"maf"``: :class:`~pyro_manifold.transforms.MaskedAutoregressive` in the MAF
      direction, so scoring data is one pass per layer and sampling is sequential; the
      autoregressive order is reversed between layers.
    * ``"realnvp"``: :class:`~pyro_manifold.transforms.AffineCoupling`, alternating
      the kept half; both directions are one pass.
    * ``"spline"``: Pyro's rational-quadratic spline couplings (Durkan et al. 2019)
      with the coordinates reversed between layers.

    ``batch_norm=True`` puts Pyro's :class:`~pyro.distributions.transforms.BatchNorm`
    between layers (as in the MAF paper); it uses batch statistics in training mode, so
    call ``.eval()`` before evaluating.

    Args:
        data_dim: :math:`D`, at least 2.
        flow: one of ``"maf"``, ``"realnvp"``, ``"spline"``.
        num_layers: number of flow layers :math:`L`.
        hidden_dims: hidden widths of each layer's network (default depends on ``D``).
        batch_norm: insert batch normalisation between layers.
        num_bins: spline bins (``flow="spline"`` only).

    Example:
        >>> flow = Flow(2, "realnvp", num_layers=2)
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape
        torch.Size([10])
        >>> flow.sample(3).shape
        torch.Size([3, 2])

    References:
        Masked Autoregressive Flow for Density Estimation. George Papamakarios, Theo
        Pavlakou, Iain Murray, 2017. arXiv:1705.07057.
        Density estimation using Real NVP. Laurent Dinh, Jascha Sohl-Dickstein, Samy
        Bengio, 2017. arXiv:1605.08803.
        Neural Spline Flows. Conor Durkan, Artur Bekasov, Iain Murray, George
        Papamakarios, 2019. arXiv:1906.04032.
    """

    def __init__(
        self,
        data_dim: int,
        flow: str = "maf",
        num_layers: int = 5,
        hidden_dims: list[int] | None = None,
        batch_norm: bool = False,
        num_bins: int = 8,
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.flow = flow
        self.layers = nn.ModuleList(
            flow_layers(data_dim, flow, num_layers, hidden_dims, batch_norm, num_bins)
        )
        self.register_buffer("base_loc", torch.zeros(data_dim))
        self.register_buffer("base_scale", torch.ones(data_dim))

    def distribution(self) -> dist.TransformedDistribution:
        """Return :math:`p(x)` as a Pyro ``TransformedDistribution`` with event shape ``(D,)``.

        Each call starts a new evaluation: the layers' one-entry caches are emptied, so
        scoring the same data tensor again after a training step is never stale.
        """
        forget_cached(self.layers)
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        return dist.TransformedDistribution(base, list(self.layers))

    def _check_x(self, x: Tensor) -> Tensor:
        return check_input("x", x, self.base_loc, event_shape=(self.data_dim,), min_dim=2)

    def model(self, x: Tensor | None = None, num_samples: int | None = None) -> Tensor:
        """Observe ``x`` of shape :math:`(N, D)`, or draw ``num_samples`` new points.

        Example:
            >>> Flow(2, "realnvp", num_layers=1).model(num_samples=4).shape
            torch.Size([4, 2])
        """
        register_parameters(self)
        if x is not None:
            n = self._check_x(x).shape[0]
        else:
            n = check_positive_int("num_samples", 1 if num_samples is None else num_samples)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(), obs=x)

    def guide(self, x: Tensor | None = None, num_samples: int | None = None) -> None:
        """Empty guide: the flow has no latent sites.

        Example:
            >>> Flow(2, "realnvp", num_layers=1).guide(torch.zeros(1, 2)) is None
            True
        """

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x)` of shape :math:`(N,)` for ``x`` of shape :math:`(N, D)`."""
        return self.distribution().log_prob(self._check_x(x))

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Draw ``num_samples`` points, shape ``(num_samples, D)``, without gradients."""
        check_positive_int("num_samples", num_samples)
        return self.distribution().sample((num_samples,))
