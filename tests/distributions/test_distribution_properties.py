r"""Property tests (hypothesis) for every distribution of pyro_manifold.distributions, float64.

Each example draws the dimensions, a batch shape (with singleton dimensions that broadcast),
a seed and the parameters, then checks on samples from the support that ``log_prob`` is
finite, that the shapes of ``batch_shape``, ``event_shape``, ``sample`` and ``log_prob`` are
consistent before and after ``.expand(batch_shape)`` (and that expanding does not change the
density), and one closed form per distribution against a brute-force computation.

Not distributions, so checked differently: :class:`~pyro_manifold.distributions.BlockLinear`
is the injective linear map of a noisy injective layer (its products are checked against the
dense matrix of its documented layout) and :class:`~pyro_manifold.distributions.Atlas` is a
``Protocol`` (a stub atlas is used to build :class:`ChartMixture`);
:class:`~pyro_manifold.distributions.GaussianNIF` is a module holding a noisy injective
layer's parameters (tests/distributions/test_gaussian_nif.py).

Runs are deterministic: ``derandomize=True`` and no example database.
"""

import inspect
import math

import pyro.distributions as dist
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Distribution

import pyro_manifold.distributions as D
from pyro_manifold.distributions import (
    BlockLinear,
    ChartMixture,
    GaussianMixture,
    MixtureOfFlows,
    NoisyInjective,
    SelectedComponent,
    StochasticInverse,
    log_manifold_term,
)
from pyro_manifold.nn import chart_membership
from pyro_manifold.transforms import (
    FLOWS,
    ConformalEmbedding,
    Reverse,
    conditional_affine_coupling,
    conditional_conformal_embedding,
    conditional_masked_autoregressive,
    flow_stack,
)

F64 = torch.float64
TOL = {"atol": 1e-8, "rtol": 1e-8}


def test_every_public_distribution_is_covered():
    covered = {"NoisyInjective", "StochasticInverse", "MixtureOfFlows", "SelectedComponent"}
    covered |= {"ChartMixture", "GaussianMixture"}
    public = {
        name
        for name in D.__all__
        if inspect.isclass(getattr(D, name)) and issubclass(getattr(D, name), Distribution)
    }
    assert public == covered, f"add property tests for: {sorted(public - covered)}"
    assert not issubclass(BlockLinear, Distribution)  # tested below as a linear map


# ----------------------------------------------------------------------------- helpers
def _seed(data) -> None:
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def _shape(data, label: str, max_dims: int = 2) -> tuple[int, ...]:
    # hypothesis shrinks towards the first choice: start from a non-trivial shape
    ndim = data.draw(st.sampled_from([n for n in (1, 2, 0) if n <= max_dims]))
    sizes = st.lists(st.sampled_from([2, 1, 3]), min_size=ndim, max_size=ndim)
    return tuple(data.draw(sizes, label=label))


def _broadcastable_to(data, shape: tuple[int, ...], label: str) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape``: leading dimensions dropped, some set to 1."""
    drop = data.draw(st.integers(0, len(shape)), label=f"{label}: dropped dims")
    ones = data.draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    return tuple(1 if one else n for n, one in zip(shape, ones, strict=True))[drop:]


def _expanded(data, batch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A batch shape that ``batch_shape`` expands to: new leading dims, singletons grown."""
    extra = _shape(data, "expand: new leading dims", max_dims=2)
    grown = [data.draw(st.integers(1, 3)) if n == 1 else n for n in batch_shape]
    return (*extra, *grown)


def _check_samples(d: Distribution, sample_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Sample, check the shapes, the support and that the log-density is finite."""
    shape = torch.Size(sample_shape) + d.batch_shape + d.event_shape
    x = d.sample(sample_shape)
    assert x.shape == shape
    assert bool(d.support.check(x).all())
    lp = d.log_prob(x)
    assert lp.shape == torch.Size(sample_shape) + d.batch_shape
    assert torch.isfinite(lp).all(), lp
    if d.has_rsample:
        assert d.rsample(sample_shape).shape == shape
    return x, lp


def _check_expand(data, d: Distribution, sample_shape: tuple[int, ...]) -> Distribution:
    """``d.expand(new)`` has consistent shapes and the same density as ``d``."""
    new = torch.Size(_expanded(data, tuple(d.batch_shape)))
    e = d.expand(new)
    assert e.batch_shape == new
    assert e.event_shape == d.event_shape
    _check_samples(e, sample_shape)
    x = d.sample()  # batch_shape + event_shape, broadcasts against the new batch shape
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x).expand(new), **TOL)
    return e


# ------------------------------------------------------------------ BlockLinear and NIF
def _block_linear(data) -> BlockLinear:
    draw = data.draw
    if draw(st.booleans(), label="image layout"):
        c = draw(st.integers(1, 2), label="channels")
        f = draw(st.integers(1, 2), label="factor")
        rows = draw(st.integers(1, 2), label="latent rows")
        cols = draw(st.integers(1, 2), label="latent cols")
        k = draw(st.integers(1, c * f * f), label="latent channels")
        weight = torch.randn(rows * cols, c * f * f, k, dtype=F64)
        return BlockLinear(weight, (c, f * rows, f * cols), f)
    big_d = draw(st.integers(1, 6), label="data_dim")
    d = draw(st.integers(1, big_d), label="latent_dim")
    return BlockLinear(torch.randn(1, big_d, d, dtype=F64))


def _dense_from_layout(a: BlockLinear) -> Tensor:
    """The :math:`(D, d)` matrix, written from the layout in the module docstring."""
    dense = torch.zeros(a.data_dim, a.latent_dim, dtype=F64)
    if a.image_shape is None:
        return a.weight[0].clone()
    c, h, w = a.image_shape
    f = a.factor
    for i in range(h // f):
        for j in range(w // f):
            p = i * (w // f) + j  # the latent position
            for fi in range(f):
                for fj in range(f):
                    for ch in range(c):
                        row = ch * h * w + (i * f + fi) * w + (j * f + fj)
                        for kk in range(a.block_cols):  # channel-major latent image
                            value = a.weight[p, (fi * f + fj) * c + ch, kk]
                            dense[row, kk * a.num_blocks + p] = value
    return dense


def _noise(data, size: int) -> Tensor:
    low = data.draw(st.sampled_from([0.05, 0.3, 1.0]), label="noise scale floor")
    return low + torch.rand(size, dtype=F64)


@given(data=st.data())
def test_block_linear_matches_its_dense_layout(data):
    _seed(data)
    a = _block_linear(data)
    dense = _dense_from_layout(a)
    torch.testing.assert_close(a.dense(), dense, atol=0, rtol=0)
    batch = _shape(data, "batch_shape")
    z = torch.randn(*batch, a.latent_dim, dtype=F64)
    x = torch.randn(*batch, a.data_dim, dtype=F64)
    torch.testing.assert_close(a.matvec(z), z @ dense.T, **TOL)
    torch.testing.assert_close(a.rmatvec(x), x @ dense, **TOL)
    precision = torch.rand(a.data_dim, dtype=F64) + 0.1
    gram = a.gram(precision)
    full = dense.T @ torch.diag(precision) @ dense
    index = a.latent_to_blocks(torch.arange(a.latent_dim))  # (P, k): each block's latents
    torch.testing.assert_close(a.blocks_to_latent(index), torch.arange(a.latent_dim))
    for p in range(a.num_blocks):
        torch.testing.assert_close(gram[p], full[index[p]][:, index[p]], **TOL)
    off_block = torch.ones_like(full, dtype=torch.bool)
    for p in range(a.num_blocks):
        off_block[index[p].unsqueeze(-1), index[p]] = False
    assert torch.equal(full[off_block], torch.zeros_like(full[off_block]))  # block diagonal


@given(data=st.data())
def test_noisy_injective(data):
    _seed(data)
    a = _block_linear(data)
    bias = torch.randn(a.data_dim, dtype=F64)
    sigma = _noise(data, a.data_dim)
    s = data.draw(st.sampled_from([1.0, 0.5, 2.0]), label="noise_multiplier")
    batch = _shape(data, "batch_shape")
    z = torch.randn(*batch, a.latent_dim, dtype=F64)
    p = NoisyInjective(z, a, bias, sigma, noise_multiplier=s, validate_args=True)
    assert p.batch_shape == batch and p.event_shape == (a.data_dim,)
    sample_shape = _shape(data, "sample_shape", max_dims=1)
    x, lp = _check_samples(p, sample_shape)
    dense = _dense_from_layout(a)
    normal = dist.Normal(z @ dense.T + bias, math.sqrt(s) * sigma).to_event(1)
    torch.testing.assert_close(lp, normal.log_prob(x), **TOL)
    torch.testing.assert_close(p.mean, normal.mean, **TOL)
    torch.testing.assert_close(p.variance, normal.variance, **TOL)
    _check_expand(data, p, sample_shape)
    # s = 0: every sample is on the manifold
    on = NoisyInjective(z, a, bias, sigma, noise_multiplier=0.0)
    torch.testing.assert_close(on.sample(sample_shape), normal.mean.expand_as(x), **TOL)


@given(data=st.data())
def test_stochastic_inverse(data):
    _seed(data)
    a = _block_linear(data)
    bias = torch.randn(a.data_dim, dtype=F64)
    sigma = _noise(data, a.data_dim)
    batch = _shape(data, "batch_shape")
    x = 2 * torch.randn(*batch, a.data_dim, dtype=F64)
    q = StochasticInverse(x, a, bias, sigma, validate_args=True)
    assert q.batch_shape == batch and q.event_shape == (a.latent_dim,)
    sample_shape = _shape(data, "sample_shape", max_dims=1)
    z, lp = _check_samples(q, sample_shape)
    # brute force: the Gaussian of z proportional to N(x; Az + b, Sigma)
    dense = _dense_from_layout(a)
    precision = dense.T @ torch.diag(sigma.pow(-2)) @ dense
    covariance = torch.linalg.inv(precision)
    mean = ((x - bias) * sigma.pow(-2)) @ dense @ covariance.T
    mvn = dist.MultivariateNormal(mean, covariance_matrix=covariance)
    torch.testing.assert_close(q.mean, mean, **TOL)
    torch.testing.assert_close(q.covariance_matrix, covariance.expand(*batch, -1, -1), **TOL)
    torch.testing.assert_close(lp, mvn.log_prob(z), **TOL)
    torch.testing.assert_close(q.entropy(), mvn.entropy(), **TOL)
    # log p(x|z) = log q(z|x) + log int p(x|z') dz' for every z
    like = NoisyInjective(z, a, bias, sigma).log_prob(x)
    torch.testing.assert_close(like, lp + log_manifold_term(x, a, bias, sigma), **TOL)
    if a.latent_dim < a.data_dim:
        # and under z ~ N(0, I): p(x) = N(b, AA^T + Sigma) = int p(x|z) q0(z) dz
        marginal = dist.LowRankMultivariateNormal(bias, dense, sigma.pow(2)).log_prob(x)
        eye = torch.eye(a.latent_dim, dtype=F64)
        prior_at_mean = dist.MultivariateNormal(torch.zeros_like(mean), eye + covariance)
        expected = log_manifold_term(x, a, bias, sigma) + prior_at_mean.log_prob(mean)
        torch.testing.assert_close(marginal, expected, **TOL)
    _check_expand(data, q, sample_shape)


# ------------------------------------------------------------------- mixtures of flows
def _components(data, batch: tuple[int, ...], k: int, d: int) -> Distribution:
    """K batched flows on R^d with batch shape ``batch + (K,)``."""
    flow = data.draw(st.sampled_from(list(FLOWS)), label="flow")
    num_layers = data.draw(st.integers(1, 2), label="num_layers")
    hidden = [data.draw(st.integers(d, 8), label="hidden_dim")]
    layers = flow_stack(d, flow, num_layers, hidden, num_components=k, num_bins=4).double()
    with torch.no_grad():
        for param in layers.parameters():
            param.add_(0.3 * torch.randn_like(param))
    loc = torch.randn(*batch, k, d, dtype=F64)
    scale = 0.5 + torch.rand(*batch, k, d, dtype=F64)
    base = dist.Normal(loc, scale).to_event(1)
    return dist.TransformedDistribution(base, list(layers))


def _mixture(data) -> MixtureOfFlows:
    _seed(data)
    k = data.draw(st.sampled_from([2, 1, 3]), label="num_components")
    d = data.draw(st.sampled_from([2, 3]), label="data_dim")
    batch = _shape(data, "batch_shape")
    logits_batch = _broadcastable_to(data, batch, "mixture_logits batch")
    components_batch = _broadcastable_to(data, batch, "components batch")
    logits = torch.randn(*logits_batch, k, dtype=F64)
    return MixtureOfFlows(logits, _components(data, components_batch, k, d), validate_args=True)


@given(data=st.data())
def test_mixture_of_flows(data):
    p = _mixture(data)
    expected_batch = torch.broadcast_shapes(
        p.mixture_logits.shape[:-1], p.component_distribution.batch_shape[:-1]
    )
    assert p.batch_shape == expected_batch
    sample_shape = _shape(data, "sample_shape", max_dims=1)
    x, lp = _check_samples(p, sample_shape)
    x2, k = p.sample_with_components(sample_shape)
    assert x2.shape == x.shape and k.shape == x.shape[:-1] and k.dtype == torch.int64
    assert bool(((k >= 0) & (k < p.num_components)).all())
    posterior = p.posterior_log_prob(x)
    assert posterior.shape == (*lp.shape, p.num_components)
    torch.testing.assert_close(posterior.logsumexp(-1), torch.zeros_like(lp), **TOL)
    # Bayes: log p(x) = log pi_k + log p(x | k) - log p(k | x), for every k
    for j in range(p.num_components):
        index = torch.full(p.batch_shape, j, dtype=torch.long)
        given_k = p.component(index).log_prob(x)
        expected = p.mixture_log_weights[..., j] + given_k - posterior[..., j]
        # the sum cancels terms as large as |log p(x | k)| (1e7 and more for a component
        # far from x), so its rounding error scales with them
        scale = 1.0 + given_k.abs() + posterior[..., j].abs()
        assert bool(((lp - expected).abs() <= TOL["atol"] * scale).all()), (lp, expected)
    _check_expand(data, p, sample_shape)


@given(data=st.data())
def test_selected_component(data):
    p = _mixture(data)
    target = (*_shape(data, "k: new leading dims", max_dims=1), *p.batch_shape)
    k_shape = _broadcastable_to(data, target, "k batch")
    k = torch.randint(p.num_components, k_shape)
    q = p.component(k)
    assert isinstance(q, SelectedComponent)
    assert q.batch_shape == torch.broadcast_shapes(k.shape, p.batch_shape)
    assert q.event_shape == p.event_shape
    sample_shape = _shape(data, "sample_shape", max_dims=1)
    x, lp = _check_samples(q, sample_shape)
    table = p.component_log_prob(x)  # (*S, *B, K)
    expected = table.gather(-1, k.expand(lp.shape).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp, expected, **TOL)
    _check_expand(data, q, sample_shape)


@given(data=st.data())
def test_mixture_samples_come_from_the_drawn_component(data):
    """With far-apart narrow components, each sample's posterior names the k that drew it."""
    _seed(data)
    num = data.draw(st.integers(1, 4), label="num_components")
    batch = _shape(data, "batch_shape")
    components_batch = _broadcastable_to(data, batch, "components batch")
    loc = 100.0 * torch.arange(num, dtype=F64).unsqueeze(-1).expand(*components_batch, num, 2)
    components = dist.Normal(loc, 0.1).to_event(1)
    p = MixtureOfFlows(torch.randn(*batch, num, dtype=F64), components)
    sample_shape = _shape(data, "sample_shape", max_dims=2)
    x, k = p.sample_with_components(sample_shape)
    assert torch.equal(p.posterior_log_prob(x).argmax(-1), k)
    k = torch.randint(num, (*sample_shape, *batch))
    assert torch.equal(p.posterior_log_prob(p.component(k).sample()).argmax(-1), k)


# ------------------------------------------------------------------------ ChartMixture
class LinearAtlas:
    """An :class:`~pyro_manifold.distributions.Atlas`: a linear encoder and K centres."""

    def __init__(self, encoder: Tensor, centres: Tensor) -> None:
        self.encoder, self.centres = encoder, centres

    def chart_distances(self, x: Tensor) -> Tensor:
        return torch.cdist(x @ self.encoder, self.centres)


def _chart_mixture(data) -> ChartMixture:
    draw = data.draw
    _seed(data)
    num_charts = draw(st.sampled_from([3, 1, 2, 4]), label="num_charts")
    big_d = draw(st.sampled_from([3, 2, 4, 1]), label="data_dim")
    d = max(1, big_d - draw(st.sampled_from([1, 0, 2, 3]), label="data_dim - latent_dim"))
    c = draw(st.integers(1, 3), label="code_dim")
    atlas = LinearAtlas(torch.randn(big_d, c, dtype=F64), torch.randn(num_charts, c, dtype=F64))
    layers = []
    for kind in draw(st.lists(st.sampled_from(["coupling", "maf", "reverse"]), max_size=2)):
        if d == 1:
            layers.append(conditional_conformal_embedding(1, 1, c, [8]))  # a chart-wise affine
        elif kind == "coupling":
            layers.append(conditional_affine_coupling(d, c, [8]))
        elif kind == "maf":
            layers.append(conditional_masked_autoregressive(d, c, [2 * d]))
        else:
            layers.append(Reverse())
    embedding_kind = draw(st.sampled_from(["conditional", "plain", "none"]), label="embedding")
    if embedding_kind == "none" and d < big_d:
        embedding_kind = "conditional"
    embedding = None
    if embedding_kind == "conditional":
        embedding = conditional_conformal_embedding(d, big_d, c, [8])
    elif embedding_kind == "plain":
        embedding = ConformalEmbedding(d, big_d)
    with torch.no_grad():
        for module in [*layers, embedding]:
            for param in module.parameters() if module is not None else []:
                param.add_(0.3 * torch.randn_like(param))
    for module in [*layers, embedding]:
        if module is not None:
            module.double()
    return ChartMixture(
        atlas,
        layers,
        torch.randn(num_charts, dtype=F64),
        data_dim=big_d,
        latent_dim=d,
        embedding=embedding,
        num_overlap=draw(st.integers(1, num_charts), label="num_overlap"),
        epsilon=draw(st.sampled_from([0.0, 0.1, 0.5]), label="epsilon"),
        restrict=draw(st.booleans(), label="restrict"),
    )


def _brute_force_log_prob(p: ChartMixture, x: Tensor) -> Tensor:
    """Eq. (2) with 1/2 log det J^T J of each whole chart map from autograd."""
    n = x.shape[0]
    terms = []
    for k in range(p.num_charts):
        transforms = p._transforms(p.atlas.centres[k].expand(n, -1))
        z = x
        for t in reversed(transforms):
            z = t.inv(z.clone())

        def chart_map(v, transforms=transforms):
            for t in transforms:
                v = t(v.clone())
            return v

        jac = torch.autograd.functional.jacobian(chart_map, z)  # (n, D, n, d)
        idx = torch.arange(n)
        jac = jac[idx, :, idx, :]
        half_log_det = 0.5 * torch.linalg.slogdet(jac.mT @ jac).logabsdet
        log_q = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        terms.append(p.chart_logits.log_softmax(-1)[k] + log_q - half_log_det)
    terms = torch.stack(terms, -1)
    if p.restrict:
        inside = chart_membership(p.atlas.chart_distances(x), p.num_overlap, p.epsilon)
        terms = terms.masked_fill(~inside, -math.inf)
    return terms.logsumexp(-1)


@given(data=st.data())
def test_chart_mixture(data):
    p = _chart_mixture(data)
    assert p.batch_shape == () and p.event_shape == (p.data_dim,)
    sample_shape = _shape(data, "sample_shape", max_dims=2)
    x, lp = _check_samples(p, sample_shape)
    flat = x.reshape(-1, p.data_dim)
    with torch.no_grad():
        posterior = p.chart_posterior(x)
    assert posterior.shape == (*sample_shape, p.num_charts)
    torch.testing.assert_close(posterior.sum(-1), torch.ones(sample_shape, dtype=F64), **TOL)
    torch.testing.assert_close(lp.reshape(-1), _brute_force_log_prob(p, flat), **TOL)
    # off the manifold (d < D) the chart inverses go through the left inverse c^+
    off = flat + 0.3 * torch.randn_like(flat)
    off_lp = p.log_prob(off)
    assert torch.isfinite(off_lp).all()
    torch.testing.assert_close(off_lp, _brute_force_log_prob(p, off), **TOL)
    assert p.expand(()) is p
    _check_expand(data, p, sample_shape)


# --------------------------------------------------------------------- GaussianMixture
@given(data=st.data())
def test_gaussian_mixture(data):
    _seed(data)
    k = data.draw(st.integers(1, 3), label="components")
    d = data.draw(st.integers(1, 3), label="dim")
    batch = _shape(data, "batch_shape")
    logits = torch.randn(*_broadcastable_to(data, batch, "logits"), k, dtype=F64)
    loc = torch.randn(*batch, k, d, dtype=F64)
    raw = torch.randn(*_broadcastable_to(data, batch, "scale_tril"), k, d, d, dtype=F64)
    tril = raw.tril(-1) + torch.diag_embed(0.3 + raw.diagonal(dim1=-2, dim2=-1).abs())
    p = GaussianMixture(logits, loc, tril, validate_args=True)
    assert p.batch_shape == batch and p.event_shape == (d,)
    sample_shape = _shape(data, "sample_shape", max_dims=1)
    x, lp = _check_samples(p, sample_shape)
    # brute force: log of the weighted sum of the K normal densities
    normals = dist.MultivariateNormal(loc, scale_tril=tril)
    density = (torch.softmax(logits, -1) * normals.log_prob(x.unsqueeze(-2)).exp()).sum(-1)
    torch.testing.assert_close(lp, density.log(), **TOL)
    _check_expand(data, p, sample_shape)
