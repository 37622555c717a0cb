r"""The VQ autoencoder of VQ-Flows: it learns the atlas (chart centres and chart regions)."""

from __future__ import annotations

import pyro
import torch
from pyro.nn import DenseNN, PyroModule
from torch import Tensor

from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import (
    check_data_rows,
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.errors import ArgumentError
from pyro_manifold.nn.vector_quantizer import VectorQuantizer, chart_membership

__all__ = ["VQAutoencoder"]


class VQAutoencoder(PyroModule):
    r"""Encoder :math:`E`, decoder :math:`D` and codebook :math:`\{v_k\}`: the VQ-Flows atlas.

    Trained (stage 1 of VQ-Flows) on the per-point loss

    .. math::

        \ell(x) = \lVert x - D(\hat e(x))\rVert^2
            + \lVert \operatorname{sg}[E(x)] - v_{k^*(x)}\rVert^2
            + \beta \lVert E(x) - \operatorname{sg}[v_{k^*(x)}]\rVert^2,

    with :math:`\hat e` the straight-through nearest code of :math:`E(x)` (see
    :class:`~pyro_manifold.nn.VectorQuantizer`). ``model(x)`` adds :math:`-\ell(x)` as a
    ``pyro.factor`` under a ``pyro.plate("data")`` and ``guide`` is empty, so
    :func:`pyro_manifold.infer.fit` minimises the mean of :math:`\ell`. In training mode
    the first call initialises the codebook by k-means on the batch's encodings, and
    every ``reseed_every`` calls the codes that no point used are re-seeded onto
    encodings of the batch.

    The atlas: :meth:`chart_distances` gives :math:`d_k(x) = \lVert E(x) - v_k\rVert` and
    :meth:`chart_membership` the overlapping regions
    :math:`U_k = \{x : d_k(x) \le (1 + \varepsilon)\tilde d_m(x)\}`. Encoding is one
    network pass.

    Args:
        data_dim: :math:`D`.
        code_dim: :math:`C`, the dimension of the codes.
        num_charts: :math:`K`, the codebook size.
        hidden_dims: hidden widths of the encoder and decoder MLPs.
        commitment: :math:`\beta`.
        reseed_every: training calls between dead-code re-seedings (0: never).

    Example:
        >>> ae = VQAutoencoder(3, code_dim=2, num_charts=4, hidden_dims=[16])
        >>> x = torch.randn(50, 3)
        >>> ae.model(x)
        >>> ae.chart_distances(x).shape, ae.chart_membership(x, 2, 0.1).sum(-1).min() >= 2
        (torch.Size([50, 4]), tensor(True))

    References:
        VQ-Flows: Vector Quantized Local Normalizing Flows. Sahil Sidheekh, Chris B.
        Dock, Tushar Jain, Radu Balan, Maneesh K. Singh, 2022. arXiv:2203.11556.
        Neural Discrete Representation Learning. Aaron van den Oord, Oriol Vinyals,
        Koray Kavukcuoglu, 2017. arXiv:1711.00937.
    """

    def __init__(
        self,
        data_dim: int,
        code_dim: int,
        num_charts: int,
        hidden_dims: list[int] | None = None,
        commitment: float = 0.25,
        reseed_every: int = 100,
    ) -> None:
        check_positive_int("data_dim", data_dim)
        check_positive_int("code_dim", code_dim)
        check_positive_int("num_charts", num_charts)
        check_positive("commitment", commitment, allow_zero=True)
        check_positive_int("reseed_every", reseed_every, minimum=0)
        hidden = [max(8 * data_dim, 64)] * 2 if hidden_dims is None else hidden_dims
        hidden = check_widths("hidden_dims", hidden)
        super().__init__()
        self.data_dim, self.code_dim, self.num_charts = data_dim, code_dim, num_charts
        self.reseed_every = reseed_every
        self.encoder = DenseNN(data_dim, hidden, param_dims=[code_dim])
        self.decoder = DenseNN(code_dim, hidden[::-1], param_dims=[data_dim])
        self.quantizer = VectorQuantizer(num_charts, code_dim, commitment)
        self.register_buffer("calls", torch.tensor(0))

    @property
    def centres(self) -> Tensor:
        r"""The chart centres :math:`v_k`, shape :math:`(K, C)` (the codebook)."""
        return self.quantizer.codebook

    def _check_x(self, x: Tensor, min_dim: int = 1) -> Tensor:
        return check_input(
            "x", x, self.quantizer.codebook, event_shape=(self.data_dim,), min_dim=min_dim
        )

    def check_data(self, x: Tensor, *, first_row: int = 0) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.

        Example:
            >>> VQAutoencoder(2, 2, 3, [8]).check_data(torch.zeros(4, 2))
        """
        check_data_rows(lambda x: self._check_x(x, min_dim=2), x, first_row)

    def encode(self, x: Tensor) -> Tensor:
        r"""Encodings :math:`E(x)`, shape :math:`(*, C)` for ``x`` of shape :math:`(*, D)`."""
        return self.encoder(self._check_x(x))

    def reconstruct(self, x: Tensor) -> Tensor:
        r"""Decoded nearest codes :math:`D(v_{k^*(x)})`, shape :math:`(*, D)`."""
        code, _, _ = self.quantizer(self.encode(x))
        return self.decoder(code)

    def loss(self, x: Tensor) -> Tensor:
        r"""The per-point loss :math:`\ell(x)` above, shape :math:`(*)`.

        In training mode this also runs the k-means start (first call) and the
        dead-code re-seeding.
        """
        e = self.encode(x)
        if self.training:
            flat = e.detach().reshape(-1, self.code_dim)
            if not bool(self.quantizer.initialized) and len(flat) >= self.num_charts:
                self.quantizer.initialize(flat)
            self.calls += 1
            if self.reseed_every and int(self.calls) % self.reseed_every == 0:
                self.quantizer.reseed_dead_codes(flat)
        code, _, vq_loss = self.quantizer(e)
        return (x - self.decoder(code)).pow(2).sum(-1) + vq_loss

    def model(self, x: Tensor) -> None:
        r"""Add :math:`-\ell(x)` for ``x`` of shape :math:`(N, D)` as a factor in a data plate."""
        register_parameters(self)
        self._check_x(x, min_dim=2)
        with pyro.plate("data", x.shape[0]):
            pyro.factor("vq_autoencoder_loss", -self.loss(x))

    def guide(self, x: Tensor) -> None:
        """Empty guide: the autoencoder has no latent sites."""

    def chart_distances(self, x: Tensor) -> Tensor:
        r"""Distances :math:`d_k(x) = \lVert E(x) - v_k\rVert`, shape :math:`(*, K)`.

        Example:
            >>> VQAutoencoder(2, 2, 3, [8]).chart_distances(torch.zeros(4, 2)).shape
            torch.Size([4, 3])
        """
        return self.quantizer.distances(self.encode(x))

    def chart_membership(self, x: Tensor, num_overlap: int = 1, epsilon: float = 0.0) -> Tensor:
        r"""Boolean :math:`(*, K)` mask of the regions :math:`U_k` containing ``x``.

        See :func:`~pyro_manifold.nn.chart_membership`; every point lies in at least
        ``num_overlap`` charts.
        """
        if isinstance(num_overlap, int) and not isinstance(num_overlap, bool):
            if num_overlap > self.num_charts:
                raise ArgumentError(
                    f"num_overlap: expected an int <= num_charts = {self.num_charts}, "
                    f"got {num_overlap}"
                )
        check_positive("epsilon", epsilon, allow_zero=True)
        return chart_membership(self.chart_distances(x), num_overlap, epsilon)

    def assign(self, x: Tensor) -> Tensor:
        r"""The nearest chart :math:`k^*(x)`, shape :math:`(*)`, int64."""
        return self.chart_distances(x).argmin(-1)
