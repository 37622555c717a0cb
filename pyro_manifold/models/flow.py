r"""The classic normalizing-flow density model: the "NF" baseline of every comparison."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import check_data_rows, check_input, check_positive_int
from pyro_manifold.metrics import SAMPLE_BATCH, sample_in_batches
from pyro_manifold.transforms import DEFAULT_FLOW, FlowFactory, flow_stack

__all__ = ["Flow"]


class Flow(PyroModule):
    r"""A normalizing flow :math:`x = T(u)`, :math:`u \sim \mathcal N(0, I_D)`, as a Pyro program.

    .. math::

        \log p(x) = \log \mathcal N(T^{-1}(x); 0, I)
            - \sum_{l=1}^{L} \log\left|\det \frac{\partial T_l}{\partial u_{l-1}}\right|.

    ``model(x)`` observes ``x`` (shape :math:`(N, D)`) under a ``pyro.plate("data")``;
    ``guide(x)`` is empty (there are no latent sites), so any Pyro ELBO equals
    :math:`-\sum_n \log p(x_n)` and training maximises the likelihood.

    Layers (``flow``): built by :func:`~pyro_manifold.transforms.flow_stack`, one of
    ``"realnvp"`` (the default; both directions one pass), ``"maf"`` (scoring one pass,
    sampling sequential), ``"spline_coupling"`` (both one pass) or
    ``"spline_autoregressive"`` (sampling one pass, scoring sequential); or your own
    flow, a callable ``flow(D)`` returning Pyro ``TransformModule`` s (e.g. a zuko flow in
    :class:`~pyro_manifold.transforms.ZukoTransform`), base to data.

    ``batch_norm=True`` puts Pyro's :class:`~pyro.distributions.transforms.BatchNorm`
    between layers (as in the MAF paper); it uses batch statistics in training mode, so
    call ``.eval()`` before evaluating.

    Args:
        data_dim: :math:`D`, at least 2.
        flow: a name of :data:`~pyro_manifold.transforms.FLOWS` or a callable (see above).
        num_layers: number of flow layers :math:`L` (named flows).
        hidden_dims: hidden widths of each layer's network (default depends on ``D``).
        batch_norm: insert batch normalisation between layers (named flows).
        num_bins: spline bins (spline flows only).

    Attributes:
        layers: the flow's ``TransformModule``\ s, base to data (an ``nn.ModuleList``):
            what a hand-written program puts in its ``TransformedDistribution`` to share
            this model's parameters.

    Example:
        >>> flow = Flow(2, "realnvp", num_layers=2)
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape
        torch.Size([10])
        >>> flow.sample(3).shape
        torch.Size([3, 2])
        >>> from pyro_manifold.transforms import affine_coupling
        >>> own = Flow(2, lambda d: [affine_coupling(d, [8]), affine_coupling(d, [8], True)])
        >>> own.log_prob(x).shape
        torch.Size([10])

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
        flow: str | FlowFactory = DEFAULT_FLOW,
        num_layers: int = 5,
        hidden_dims: list[int] | None = None,
        batch_norm: bool = False,
        num_bins: int = 8,
    ) -> None:
        check_positive_int("data_dim", data_dim, minimum=2 if isinstance(flow, str) else 1)
        super().__init__()
        self.data_dim = data_dim
        self.flow = flow
        self.layers = flow_stack(
            data_dim, flow, num_layers, hidden_dims, batch_norm=batch_norm, num_bins=num_bins
        )
        self.register_buffer("base_loc", torch.zeros(data_dim))
        self.register_buffer("base_scale", torch.ones(data_dim))

    def distribution(self) -> dist.TransformedDistribution:
        """Return :math:`p(x)` as a Pyro ``TransformedDistribution`` with event shape ``(D,)``.

        The layers' one-entry caches serve a result only while the parameters, the grad
        mode and the input are unchanged, so scoring the same data tensor again after a
        training step is never stale.
        """
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        return dist.TransformedDistribution(base, list(self.layers))

    def _check_x(self, x: Tensor) -> Tensor:
        return check_input("x", x, self.base_loc, event_shape=(self.data_dim,), min_dim=2)

    def check_data(self, x: Tensor, num_samples: int | None = None, *, first_row: int = 0) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.

        Example:
            >>> Flow(2, "realnvp", num_layers=1).check_data(torch.zeros(4, 2))
        """
        check_data_rows(self._check_x, x, first_row)

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
    def sample(self, num_samples: int, *, batch_size: int = SAMPLE_BATCH) -> Tensor:
        """Draw ``num_samples`` points, shape ``(num_samples, D)``, without gradients.

        At most ``batch_size`` points go through the flow at a time
        (:func:`~pyro_manifold.metrics.sample_in_batches`), so memory beyond the draws is
        that of one batch at any ``num_samples``. On the CPU and for a fixed seed the
        draws equal those of one unbatched call when ``batch_size`` times ``D`` is a
        multiple of 16 (the default's is) and the last batch holds at least 16 numbers;
        otherwise they agree in distribution.
        """
        check_positive_int("num_samples", num_samples)
        distribution = self.distribution()
        return sample_in_batches(
            lambda b: distribution.sample((b,)), num_samples, batch_size, device=None
        )
