r"""Property tests (hypothesis) for :class:`~pyro_manifold.distributions.GaussianNIF`, float64.

A layer whose two directions are distributions: the pseudo-inverse is a left inverse of
:math:`z \mapsto Az + b` (and a weighted least-squares projection), and the manifold term
equals its dense closed form.

Runs are deterministic: ``derandomize=True`` and no example database.
"""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from pyro_manifold.distributions import GaussianNIF

F64 = torch.float64
TOL = {"atol": 1e-8, "rtol": 1e-8}


def _dim(draw, lo: int, hi: int, label: str) -> int:
    """An int in ``[lo, hi]``; shrinks (and derandomized runs start) mid-range, not at ``lo``."""
    mid = (lo + hi + 1) // 2
    return draw(st.sampled_from(sorted(range(lo, hi + 1), key=lambda n: abs(n - mid))), label=label)


def _batch(data) -> tuple[int, ...]:
    # hypothesis shrinks towards the first choice: start from a non-trivial shape
    ndim = data.draw(st.sampled_from([1, 2, 0]), label="batch ndim")
    sizes = st.lists(st.sampled_from([2, 1, 3]), min_size=ndim, max_size=ndim)
    return tuple(data.draw(sizes, label="batch_shape"))


def _gaussian_nif(data) -> GaussianNIF:
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    if draw(st.booleans(), label="image"):
        c = _dim(draw, 1, 2, "channels")
        f = _dim(draw, 1, 2, "factor")
        if c * f * f < 2:  # a patch of one value cannot lower the dimension
            c = 2
        rows = _dim(draw, 1, 2, "latent_rows")
        cols = _dim(draw, 1, 2, "latent_cols")
        k = _dim(draw, 1, c * f * f - 1, "latent_channels")
        nif = GaussianNIF(
            k * rows * cols, c * f * f * rows * cols, image_shape=(c, f * rows, f * cols), factor=f
        )
    else:
        big_d = _dim(draw, 2, 6, "data_dim")
        d = _dim(draw, 1, big_d - 1, "latent_dim")
        noise = draw(st.sampled_from([0.01, 0.1, 1.0]), label="init_noise_scale")
        nif = GaussianNIF(d, big_d, init_noise_scale=noise)
    nif = nif.double()
    with torch.no_grad():
        nif.weight.add_(0.3 * torch.randn_like(nif.weight))
        nif.bias.normal_()
        nif.noise_raw.add_(0.5 * torch.randn_like(nif.noise_raw))
    return nif


@given(data=st.data())
def test_gaussian_nif_pseudo_inverse_is_a_left_inverse(data):
    nif = _gaussian_nif(data)
    batch = _batch(data)
    z = torch.randn(*batch, nif.latent_dim, dtype=F64)
    on_manifold = nif.linear.matvec(z) + nif.bias
    assert on_manifold.shape == (*batch, nif.data_dim)
    torch.testing.assert_close(nif.pseudo_inverse(on_manifold), z, **TOL)
    # noise multiplier 0 samples exactly on the manifold
    torch.testing.assert_close(nif.likelihood(z, s=0.0).sample(), on_manifold, atol=0, rtol=0)
    # off the manifold: Az+ + b is the Sigma^-1-weighted least-squares fit (normal equations)
    with torch.no_grad():
        x = on_manifold + torch.randn_like(on_manifold)
        z_plus = nif.pseudo_inverse(x)
        residual = (x - nif.linear.matvec(z_plus) - nif.bias) * nif.noise_scale.pow(-2)
        dense = nif.linear.dense()
        normal = residual @ dense
        bound = 1e-9 * (1 + residual.abs().amax() * dense.abs().amax())
        assert normal.abs().max() <= bound * nif.data_dim


@given(data=st.data())
def test_gaussian_nif_manifold_term_matches_dense_closed_form(data):
    nif = _gaussian_nif(data)
    batch = _batch(data)
    with torch.no_grad():
        x = 2 * torch.randn(*batch, nif.data_dim, dtype=F64)
        got = nif.log_manifold_term(x)
        a, b, sigma = nif.linear.dense(), nif.bias, nif.noise_scale
        precision = a.T @ torch.diag(sigma.pow(-2)) @ a
        rhs = ((x - b) * sigma.pow(-2)) @ a
        z_star = torch.linalg.solve(precision, rhs.unsqueeze(-1)).squeeze(-1)
        peak = torch.distributions.Normal(z_star @ a.T + b, sigma).log_prob(x).sum(-1)
        # int N(x; Az + b, Sigma) dz: a Gaussian integral in z around its peak z*
        expected = (
            peak
            + 0.5 * nif.latent_dim * math.log(2 * math.pi)
            - 0.5 * torch.linalg.slogdet(precision).logabsdet
        )
    assert got.shape == batch
    torch.testing.assert_close(got, expected, **TOL)
