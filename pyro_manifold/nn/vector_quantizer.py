r"""Vector quantization: a codebook of chart centres, k-means start, dead-code re-seeding.

The quantizer maps an encoding :math:`e` to its nearest code
:math:`v_{k^*} = \arg\min_k \lVert e - v_k\rVert` and trains with the VQ-VAE losses and
the straight-through gradient (van den Oord et al. 2017):

.. math::

    \hat e = e + \operatorname{sg}[v_{k^*} - e],\qquad
    \mathcal L_{\mathrm{VQ}} = \lVert \operatorname{sg}[e] - v_{k^*}\rVert^2
        + \beta\,\lVert e - \operatorname{sg}[v_{k^*}]\rVert^2 .

In VQ-Flows the codes are the chart centres and the chart regions are
:math:`U_k = \{x : \lVert E(x) - v_k\rVert \le (1+\varepsilon)\,\tilde d_m(x)\}`, with
:math:`\tilde d_m(x)` the distance to the :math:`m`-th nearest code
(:func:`chart_membership`).
"""

from __future__ import annotations

import torch
from pyro.distributions.util import is_validation_enabled
from torch import Tensor, nn

from pyro_manifold._parallel import editing_in_place
from pyro_manifold._validation import (
    check_bounds,
    check_input,
    check_positive,
    check_positive_int,
)
from pyro_manifold.errors import ArgumentError
from pyro_manifold.nn.kmeans import kmeans

__all__ = ["VectorQuantizer", "chart_membership"]


def chart_membership(distances: Tensor, num_overlap: int = 1, epsilon: float = 0.0) -> Tensor:
    r"""Boolean mask of the chart regions containing each point, from its code distances.

    .. math::

        x \in U_k \iff d_k(x) \le (1 + \varepsilon)\, \tilde d_m(x),

    with :math:`\tilde d_m(x)` the :math:`m`-th smallest of :math:`d_1(x), \dots, d_K(x)`.
    The comparison is :math:`\le` (the paper writes :math:`<`) so that the :math:`m`
    nearest charts always belong, also for :math:`\varepsilon = 0` or a point exactly at
    a code: every point lies in at least :math:`m` charts.

    Args:
        distances: :math:`d_k(x) \ge 0`, shape :math:`(*, K)`.
        num_overlap: :math:`m \in [1, K]`.
        epsilon: :math:`\varepsilon \ge 0`, the relative overlap margin.

    Returns:
        A ``bool`` tensor of shape :math:`(*, K)`.

    Example:
        >>> d = torch.tensor([[0.1, 1.0, 1.05, 3.0]])
        >>> chart_membership(d, num_overlap=2, epsilon=0.1)
        tensor([[ True,  True,  True, False]])
    """
    check_input("distances", distances, min_dim=1)
    if is_validation_enabled():
        check_bounds("distances", distances, lower=0.0)
    num_charts = distances.shape[-1]
    check_positive_int("num_overlap", num_overlap)
    if num_overlap > num_charts:
        raise ArgumentError(
            f"num_overlap: expected an int <= the number of charts K = {num_charts}, "
            f"got {num_overlap}"
        )
    epsilon = check_positive("epsilon", epsilon, allow_zero=True)
    mth = distances.kthvalue(num_overlap, dim=-1, keepdim=True).values
    return distances <= (1.0 + epsilon) * mth


class VectorQuantizer(nn.Module):
    r"""A codebook :math:`\{v_k\}_{k=1}^K \subset \mathbb R^C` with straight-through quantization.

    ``forward(e)`` returns the straight-through codes :math:`\hat e` (values
    :math:`v_{k^*}`, gradient of the identity to :math:`e`), the indices :math:`k^*` and
    the per-point VQ loss above. It also counts how often each code is chosen in
    training mode; :meth:`reseed_dead_codes` moves every code that no point used since
    the last re-seeding onto a random encoding of the current batch, and
    :meth:`initialize` places the codebook by k-means (k-means++ start, Lloyd steps).
    In data-parallel :func:`~pyro_manifold.infer.fit` both edits take rank 0's values
    on every rank (its batch, its draws; the usage counts are a buffer and so are
    rank 0's too), so the ranks' codebooks stay equal.

    Args:
        num_codes: :math:`K`.
        code_dim: :math:`C`.
        commitment: :math:`\beta \ge 0`, weight of the commitment loss.

    Example:
        >>> vq = VectorQuantizer(4, 2)
        >>> vq.initialize(torch.randn(100, 2))
        >>> codes, index, loss = vq(torch.randn(8, 2))
        >>> codes.shape, index.shape, loss.shape
        (torch.Size([8, 2]), torch.Size([8]), torch.Size([8]))

    References:
        Neural Discrete Representation Learning. Aaron van den Oord, Oriol Vinyals,
        Koray Kavukcuoglu, 2017. arXiv:1711.00937.
    """

    def __init__(self, num_codes: int, code_dim: int, commitment: float = 0.25) -> None:
        check_positive_int("num_codes", num_codes)
        check_positive_int("code_dim", code_dim)
        self.commitment = check_positive("commitment", commitment, allow_zero=True)
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim))
        self.register_buffer("usage", torch.zeros(num_codes))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, e: Tensor) -> Tensor:
        return check_input(
            "e", e, self.codebook, event_shape=(self.code_dim,), owner="the codebook's"
        )

    def distances(self, e: Tensor) -> Tensor:
        r"""Distances :math:`\lVert e - v_k\rVert`, shape :math:`(*, K)`, for ``e`` :math:`(*, C)`.

        Example:
            >>> VectorQuantizer(3, 2).distances(torch.zeros(5, 2)).shape
            torch.Size([5, 3])
        """
        self._check(e)
        diff = e.unsqueeze(-2) - self.codebook
        return diff.pow(2).sum(-1).clamp_min(0).sqrt()

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize encodings :math:`(*, C)`: straight-through codes, indices :math:`(*)`, loss."""
        index = self.distances(e).argmin(-1)
        code = self.codebook[index]
        loss = (e.detach() - code).pow(2).sum(-1) + self.commitment * (e - code.detach()).pow(
            2
        ).sum(-1)
        if self.training:
            with torch.no_grad():
                self.usage += torch.bincount(index.reshape(-1), minlength=self.num_codes)
        return e + (code - e).detach(), index, loss

    @torch.no_grad()
    def reseed_dead_codes(self, e: Tensor) -> int:
        r"""Move each code unused since the last call onto a random encoding from ``e``.

        Args:
            e: encodings :math:`(N, C)` of the current batch.

        Returns:
            The number of codes re-seeded (the usage counts restart from zero).

        Example:
            >>> vq = VectorQuantizer(3, 1)
            >>> vq.initialize(torch.tensor([[0.0], [1.0], [2.0]]))
            >>> _ = vq(torch.zeros(4, 1))
            >>> vq.reseed_dead_codes(torch.full((4, 1), 0.5))
            2
        """
        self._check(e)
        flat = e.reshape(-1, self.code_dim)
        dead = (self.usage == 0).nonzero().squeeze(-1)
        if len(dead) > 0:
            pick = torch.randint(len(flat), (len(dead),), device=flat.device)
            noise = 1e-3 * flat.std(0, keepdim=True).nan_to_num(1.0) * torch.randn_like(flat[pick])
            with editing_in_place(self.codebook):
                self.codebook[dead] = flat[pick] + noise
        self.usage.zero_()
        return len(dead)

    @torch.no_grad()
    def initialize(self, e: Tensor, num_iterations: int = 20) -> None:
        r"""Place the codebook by k-means on encodings ``e`` :math:`(N, C)`, :math:`N \ge K`.

        :func:`~pyro_manifold.nn.kmeans` (k-means++ seeding from the global random state,
        then up to ``num_iterations`` Lloyd steps; empty clusters keep their centre).
        """
        self._check(e)
        check_positive_int("num_iterations", num_iterations, minimum=0)
        flat = e.reshape(-1, self.code_dim).to(self.codebook.dtype)
        if len(flat) < self.num_codes:
            raise ArgumentError(
                f"e: expected at least num_codes = {self.num_codes} encodings, got {len(flat)}"
            )
        centres, _ = kmeans(flat, self.num_codes, num_iterations)
        with editing_in_place(self.codebook):
            self.codebook.copy_(centres)
        self.usage.zero_()
        self.initialized.fill_(True)
