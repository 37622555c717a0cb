r"""Partially input-convex neural networks (PICNN): convex in one input, free in the other."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_manifold._validation import (
    check_broadcast,
    check_input,
    check_positive_int,
    check_widths,
)
from pyro_manifold.errors import ArgumentError

__all__ = ["PICNN"]

# F.softplus is the identity above this input (its default threshold); the derivatives below
# are those of that function, so that they match autograd through forward().
_SOFTPLUS_THRESHOLD = 20.0


def _softplus_derivatives(x: Tensor) -> tuple[Tensor, Tensor]:
    """First and second derivatives of ``F.softplus`` at ``x``."""
    linear = x > _SOFTPLUS_THRESHOLD
    first = torch.sigmoid(x)
    second = first * torch.sigmoid(-x)  # not first * (1 - first): no cancellation
    return first.masked_fill(linear, 1.0), second.masked_fill(linear, 0.0)


def _nonnegative_init(raw: Tensor, fan_in: int) -> None:
    """Initialise ``raw`` so that ``softplus(raw)`` has mean about ``1 / fan_in``."""
    with torch.no_grad():
        target = torch.empty_like(raw).uniform_(0.5, 1.5) / fan_in
        raw.copy_(torch.log(torch.expm1(target)))


class PICNN(nn.Module):
    r"""A scalar network :math:`g(z, h)` that is convex in :math:`z` for every context :math:`h`.

    The context path is an ordinary MLP, :math:`u_0 = h`,
    :math:`u_{k+1} = \operatorname{elu}(\tilde W_k u_k + \tilde b_k)`; the convex path
    (Amos et al. 2017, as used by PCP-Map) is, for :math:`k = 0, \dots, K`,

    .. math::

        a_{k+1} = \sigma\Big(
            W^{(a)}_k \big(a_k \odot \operatorname{softplus}(A_k u_k + \alpha_k)\big)
            + W^{(z)}_k \big(z \odot (B_k u_k + \beta_k)\big)
            + C_k u_k + c_k \Big),
        \qquad g(z, h) = a_{K+1},

    with :math:`\sigma = \operatorname{softplus}` (convex, non-decreasing, smooth) on
    the hidden layers, no activation and no context-only term :math:`C_K u_K + c_K` on
    the scalar output layer (it would not change :math:`\nabla_z g`), no :math:`a_0`
    term on the first layer, and :math:`W^{(a)}_k = \operatorname{softplus}(\cdot) \ge 0`
    element-wise. Each pre-activation is a non-negative combination of convex functions
    of :math:`z` plus a function affine in :math:`z`, so every :math:`a_k`, and
    :math:`g`, is convex in :math:`z` (and :math:`C^\infty`, so its Hessian exists).
    Nothing constrains the dependence on :math:`h`.

    Shapes: ``z`` is :math:`(*, D)`, ``context`` is :math:`(*, C)`; the batch shapes
    broadcast and the output is :math:`(*)`. The context path runs on ``context``'s
    own batch shape before broadcasting, so a context of shape :math:`(N, C)` shared by
    :math:`K` particles :math:`(K, N, D)` costs one context pass, not :math:`K`.

    Args:
        input_dim: :math:`D`, the convex input's size.
        context_dim: :math:`C`, the context's size.
        hidden_dims: widths of the convex path's hidden layers (:math:`K` of them).
        context_hidden_dims: widths of the context path's hidden layers, one per convex
            hidden layer; defaults to ``hidden_dims``.

    Example:
        >>> g = PICNN(3, 2, hidden_dims=[16, 16])
        >>> g(torch.randn(5, 3), torch.randn(5, 2)).shape
        torch.Size([5])
        >>> g(torch.randn(4, 5, 3), torch.randn(5, 2)).shape  # context broadcasts
        torch.Size([4, 5])

    References:
        Input Convex Neural Networks. Brandon Amos, Lei Xu, J. Zico Kolter, 2017.
        arXiv:1609.07152.
        Efficient Neural Network Approaches for Conditional Optimal Transport with
        Applications in Bayesian Inference. Zheyu Oliver Wang, Ricardo Baptista,
        Youssef Marzouk, Lars Ruthotto, Deepanshu Verma, 2023. arXiv:2310.16975.
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: list[int] | tuple[int, ...] = (64, 64),
        context_hidden_dims: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.context_dim = check_positive_int("context_dim", context_dim)
        hidden = check_widths("hidden_dims", hidden_dims, allow_empty=True)
        if context_hidden_dims is None:
            ctx = list(hidden)
        else:
            ctx = check_widths("context_hidden_dims", context_hidden_dims, allow_empty=True)
            if len(ctx) != len(hidden):
                raise ArgumentError(
                    f"context_hidden_dims: expected {len(hidden)} widths (one per hidden "
                    f"layer of hidden_dims={hidden}), got {ctx}"
                )
        self.hidden_dims, self.context_hidden_dims = hidden, ctx
        ctx_widths = [context_dim, *ctx]  # u_0 .. u_K
        widths = [0, *hidden, 1]  # a_0 (absent) .. a_{K+1}
        self.context_layers = nn.ModuleList(
            nn.Linear(ctx_widths[k], ctx_widths[k + 1]) for k in range(len(ctx))
        )
        # Per convex layer k: gate A_k (context -> a_k), the non-negative W^(a)_k,
        # the z-gate B_k (context -> D), W^(z)_k, and the context-only term C_k.
        self.a_gate = nn.ModuleList()
        self.a_weight_raw = nn.ParameterList()
        self.z_gate = nn.ModuleList()
        self.z_weight = nn.ModuleList()
        self.context_term = nn.ModuleList()
        for k in range(len(hidden) + 1):
            c_in, m_in, m_out = ctx_widths[k], widths[k], widths[k + 1]
            if k > 0:
                self.a_gate.append(nn.Linear(c_in, m_in))
                raw = nn.Parameter(torch.empty(m_out, m_in))
                _nonnegative_init(raw, m_in)
                self.a_weight_raw.append(raw)
            self.z_gate.append(nn.Linear(c_in, input_dim))
            self.z_weight.append(nn.Linear(input_dim, m_out, bias=False))
            if k < len(hidden):  # on the output it would not depend on z: left out
                self.context_term.append(nn.Linear(c_in, m_out))
        with torch.no_grad():  # gates start near one so z enters with its own scale
            for gate in self.z_gate:
                gate.weight.mul_(0.1)
                gate.bias.fill_(1.0)
            for gate in self.a_gate:
                gate.weight.mul_(0.1)
                gate.bias.fill_(math.log(math.e - 1.0))

    def _check(self, z: Tensor, context: Tensor) -> None:
        """Shapes, dtypes and devices; no values (the Newton line search tries any point)."""
        reference = self.z_weight[0].weight
        owner = "the network's"
        check_input(
            "z",
            z,
            reference,
            event_shape=(self.input_dim,),
            nonempty=False,
            finite=False,
            owner=owner,
        )
        check_input(
            "context",
            context,
            reference,
            event_shape=(self.context_dim,),
            nonempty=False,
            finite=False,
            owner=owner,
        )
        check_broadcast("context", context.shape[:-1], z.shape[:-1], "z")

    def nonnegative_weights(self) -> list[Tensor]:
        r"""The matrices :math:`W^{(a)}_k = \operatorname{softplus}(\cdot) \geq 0`."""
        return [F.softplus(raw) for raw in self.a_weight_raw]

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        r"""Evaluate :math:`g(z, h)`, shape :math:`(*)`, convex in ``z``."""
        self._check(z, context)
        u = context
        a: Tensor | None = None
        last = len(self.hidden_dims)
        for k in range(last + 1):
            pre = self.z_weight[k](z * self.z_gate[k](u))
            if a is not None:
                gate = F.softplus(self.a_gate[k - 1](u))
                pre = pre + (a * gate) @ F.softplus(self.a_weight_raw[k - 1]).T
            if k == last:
                return pre.squeeze(-1)
            a = F.softplus(pre + self.context_term[k](u))
            u = F.elu(self.context_layers[k](u))
        raise AssertionError("unreachable")  # pragma: no cover

    def derivatives(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Value, gradient and Hessian in :math:`z`, in one forward pass.

        The Jacobians :math:`P_k = \partial\, \mathrm{pre}_k / \partial z` of the
        pre-activations are carried forward with the values,

        .. math::

            P_k = W^{(z)}_k \operatorname{diag}(B_k u_k + \beta_k)
                + W^{(a)}_k \operatorname{diag}(\operatorname{softplus}(A_k u_k + \alpha_k))
                  \operatorname{diag}(\sigma'(\mathrm{pre}_{k-1})) P_{k-1},

        so :math:`\nabla_z g = P_K^\top`, and, since every other operation is linear
        in :math:`z`, the Hessian is a sum of positive semi-definite terms,

        .. math::

            \nabla^2_z g = \sum_{k<K} P_k^\top \operatorname{diag}\big(
                \delta_{k+1} \odot \sigma''(\mathrm{pre}_k)\big) P_k,
            \qquad \delta_{k+1} = \frac{\partial g}{\partial a_{k+1}} \ge 0.

        Cost: :math:`O(B\, m^2 D + B\, m D^2)` for :math:`B` points and width :math:`m`,
        the price of :math:`D` gradient evaluations but in a few large matrix products;
        memory :math:`O(B\, m D)` per layer. Differentiable (first order) in ``z``,
        ``context`` and the parameters.

        Args:
            z: :math:`(*, D)`.
            context: :math:`(*, C)`.

        Returns:
            :math:`g` :math:`(*)`, :math:`\nabla_z g` :math:`(*, D)` and
            :math:`\nabla^2_z g` :math:`(*, D, D)`.

        Example:
            >>> g = PICNN(2, 1, [8])
            >>> value, grad, hess = g.derivatives(torch.randn(5, 2), torch.randn(5, 1))
            >>> value.shape, grad.shape, hess.shape
            (torch.Size([5]), torch.Size([5, 2]), torch.Size([5, 2, 2]))
        """
        self._check(z, context)
        last = len(self.hidden_dims)
        u = context
        a = a_jac = None
        saved: list[tuple[Tensor, Tensor]] = []  # (pre_k, P_k) of the hidden layers
        mixing: list[tuple[Tensor, Tensor]] = []  # (gate, W^(a)) of layers 1..K
        for k in range(last + 1):
            z_gate = self.z_gate[k](u)
            pre = self.z_weight[k](z * z_gate)
            jac = self.z_weight[k].weight * z_gate.unsqueeze(-2)
            if a is not None and a_jac is not None:
                gate = F.softplus(self.a_gate[k - 1](u))
                w_a = F.softplus(self.a_weight_raw[k - 1])
                mixing.append((gate, w_a))
                pre = pre + (a * gate) @ w_a.T
                jac = jac + w_a @ (gate.unsqueeze(-1) * a_jac)
            if k == last:
                break
            pre = pre + self.context_term[k](u)
            saved.append((pre, jac))
            a = F.softplus(pre)
            a_jac = _softplus_derivatives(pre)[0].unsqueeze(-1) * jac
            u = F.elu(self.context_layers[k](u))
        batch = torch.broadcast_shapes(z.shape[:-1], context.shape[:-1])
        value, grad = pre.squeeze(-1), jac.squeeze(-2).expand(*batch, self.input_dim)
        hess = z.new_zeros((*batch, self.input_dim, self.input_dim))
        # adjoints of the hidden layers' outputs, from the top:
        # dg/da_K = gate_K * W_K^T 1,  dg/da_k = gate_k * W_k^T (dg/da_{k+1} * sigma'(pre_k))
        adjoint = None
        for k in range(last - 1, -1, -1):
            pre_k, jac_k = saved[k]
            gate, w_a = mixing[k]
            adjoint = gate * (w_a.squeeze(0) if adjoint is None else adjoint @ w_a)
            first, second = _softplus_derivatives(pre_k)
            weights = adjoint * second
            hess = hess + jac_k.transpose(-1, -2) @ (weights.unsqueeze(-1) * jac_k)
            adjoint = adjoint * first
        return value, grad, hess

    def extra_repr(self) -> str:
        """Sizes shown by ``repr``."""
        return (
            f"input_dim={self.input_dim}, context_dim={self.context_dim}, "
            f"hidden_dims={self.hidden_dims}, context_hidden_dims={self.context_hidden_dims}"
        )
