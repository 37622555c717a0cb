r"""Injective linear maps :math:`A: \mathbb R^d \to \mathbb R^D` that are block diagonal.

After a fixed re-ordering of coordinates, :math:`A` is block diagonal with :math:`P`
blocks :math:`A_p` of shape :math:`(m, k)`, so :math:`D = Pm` and :math:`d = Pk`:

.. math::

    (Az)_p = A_p z_p, \qquad
    \Lambda = A^\top \Sigma^{-1} A = \operatorname{blockdiag}_p(A_p^\top \Sigma_p^{-1} A_p).

A dense matrix is the case :math:`P = 1`. For images of shape :math:`(C, H, W)` and an
upsampling factor :math:`f`, each latent position :math:`p` of an
:math:`(k, H/f, W/f)` latent image maps to its own :math:`f \times f` patch of all
:math:`C` channels (:math:`m = f^2 C`): nearest-neighbour upsampling followed by a
per-patch linear map (Cunningham et al. 2020, appendix A.6). :math:`\Lambda` is then
block diagonal with :math:`k \times k` blocks and every product costs
:math:`O(D k)`, linear in the latent size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_manifold._validation import check_input, check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentError

__all__ = ["BlockLinear"]


class BlockLinear:
    r"""A block-diagonal injective linear map, applied to flat vectors.

    Args:
        weight: the blocks :math:`A_p`, shape :math:`(P, m, k)` with :math:`m \geq k`.
        image_shape: ``(C, H, W)`` for the image layout described in the module docstring;
            ``None`` for a dense matrix (then :math:`P` must be 1).
        factor: the upsampling factor :math:`f` of the image layout.

    Example:
        >>> A = BlockLinear(torch.randn(1, 5, 2))
        >>> A.data_dim, A.latent_dim
        (5, 2)
        >>> A.matvec(torch.randn(3, 2)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        weight: Tensor,
        image_shape: tuple[int, int, int] | None = None,
        factor: int | None = None,
    ) -> None:
        check_tensor("weight", weight, min_dim=3, finite=False)
        if weight.dim() != 3:
            raise ArgumentError(f"weight: expected shape (P, m, k), got {tuple(weight.shape)}")
        num_blocks, m, k = weight.shape
        if m < k:
            raise ArgumentError(
                f"weight: an injective map needs m >= k in each (m, k) block, got {(m, k)}"
            )
        if image_shape is None:
            if num_blocks != 1:
                raise ArgumentError(f"weight: a dense map has one block, got {num_blocks}")
        else:
            c, h, w = image_shape
            f = check_positive_int("factor", factor)
            if h % f or w % f:
                raise ArgumentError(f"factor: expected a divisor of H={h} and W={w}, got {f}")
            if num_blocks != (h // f) * (w // f) or m != c * f * f:
                raise ArgumentError(
                    f"weight: expected shape ({(h // f) * (w // f)}, {c * f * f}, k) for "
                    f"image_shape {tuple(image_shape)} and factor {f}, got {tuple(weight.shape)}"
                )
        self.weight = weight
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.factor = factor
        self.num_blocks, self.block_rows, self.block_cols = num_blocks, m, k
        self.data_dim, self.latent_dim = num_blocks * m, num_blocks * k

    # -- layouts ------------------------------------------------------------------------
    def data_to_blocks(self, x: Tensor) -> Tensor:
        """Reorder :math:`(*, D)` into :math:`(*, P, m)`."""
        if self.image_shape is None:
            return x.unsqueeze(-2)
        c, h, w = self.image_shape
        f, batch = self.factor, x.shape[:-1]
        x = x.reshape(*batch, c, h // f, f, w // f, f)
        x = x.movedim(-5, -1)  # (*, h, f, w, f, c)
        x = x.transpose(-3, -4)  # (*, h, w, f, f, c)
        return x.reshape(*batch, self.num_blocks, self.block_rows)

    def blocks_to_data(self, xb: Tensor) -> Tensor:
        """Inverse of :meth:`data_to_blocks`."""
        if self.image_shape is None:
            return xb.squeeze(-2)
        c, h, w = self.image_shape
        f, batch = self.factor, xb.shape[:-2]
        x = xb.reshape(*batch, h // f, w // f, f, f, c).transpose(-3, -4)
        return x.movedim(-1, -5).reshape(*batch, c * h * w)

    def latent_to_blocks(self, z: Tensor) -> Tensor:
        """Reorder :math:`(*, d)` (channel-major latent image) into :math:`(*, P, k)`."""
        if self.image_shape is None:
            return z.unsqueeze(-2)
        return z.reshape(*z.shape[:-1], self.block_cols, self.num_blocks).transpose(-1, -2)

    def blocks_to_latent(self, zb: Tensor) -> Tensor:
        """Inverse of :meth:`latent_to_blocks`."""
        if self.image_shape is None:
            return zb.squeeze(-2)
        return zb.transpose(-1, -2).reshape(*zb.shape[:-2], self.latent_dim)

    # -- products -----------------------------------------------------------------------
    def _check(self, name: str, x: Tensor, size: int) -> Tensor:
        """Shape, dtype and device (no values: this is the inner loop of the NIF)."""
        return check_input(
            name,
            x,
            self.weight,
            event_shape=(size,),
            nonempty=False,
            finite=False,
            owner="the map's",
        )

    def matvec(self, z: Tensor) -> Tensor:
        r""":math:`Az` for :math:`z` of shape :math:`(*, d)`; returns :math:`(*, D)`."""
        zb = self.latent_to_blocks(self._check("z", z, self.latent_dim))
        return self.blocks_to_data(torch.einsum("pmk,...pk->...pm", self.weight, zb))

    def rmatvec(self, x: Tensor) -> Tensor:
        r""":math:`A^\top x` for :math:`x` of shape :math:`(*, D)`; returns :math:`(*, d)`."""
        xb = self.data_to_blocks(self._check("x", x, self.data_dim))
        return self.blocks_to_latent(torch.einsum("pmk,...pm->...pk", self.weight, xb))

    def gram(self, precision: Tensor) -> Tensor:
        r"""The blocks of :math:`\Lambda = A^\top \operatorname{diag}(\text{precision}) A`.

        Args:
            precision: :math:`\Sigma^{-1}` diagonal, shape :math:`(D,)`.

        Returns:
            :math:`(P, k, k)`.
        """
        pb = self.data_to_blocks(self._check("precision", precision, self.data_dim))
        return torch.einsum("pmk,pm,pml->pkl", self.weight, pb, self.weight)

    def dense(self) -> Tensor:
        r"""The full :math:`(D, d)` matrix (for tests and small problems)."""
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        return self.matvec(eye).T
