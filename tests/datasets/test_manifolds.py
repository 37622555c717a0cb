import math

import pytest
import torch

from pyro_manifold.datasets import (
    LinkedRings,
    Sphere,
    SwissRoll,
    Torus,
    ToyData,
    ToyManifold,
    make_manifold,
)

F64 = torch.float64
NAMES = ["sphere", "torus", "swiss_roll", "linked_rings"]


@pytest.fixture(autouse=True)
def _single_thread():
    # the tensors here are small: on a busy machine, multithreaded elementwise kernels
    # (sin, cos on a few thousand entries) wait for each other far longer than they compute
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _query_points(num, half_width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(num, 3, generator=g, dtype=F64) - 1) * half_width


@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_dtypes_and_determinism(name):
    m = make_manifold(name)
    assert isinstance(m, ToyManifold) and m.ambient_dim == 3
    assert m.intrinsic_dim == (1 if name == "linked_rings" else 2)
    state = torch.get_rng_state()
    a = m.sample(200, noise=0.1, seed=5)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be untouched"
    assert isinstance(a, ToyData)
    assert a.data.shape == (200, 3) and a.data.dtype == torch.float32
    b, c = m.sample(200, noise=0.1, seed=5), m.sample(200, noise=0.1, seed=6)
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)
    d = m.sample(200, noise=0.1, seed=5, dtype=F64)
    assert d.data.dtype == F64 and torch.equal(d.data.float(), a.data)
    if a.labels is not None:
        assert a.labels.dtype == torch.int64 and a.labels.shape == (200,)
        assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("name", NAMES)
def test_on_manifold_samples_have_zero_distance(name):
    m = make_manifold(name)
    x, _ = m.sample(1000, seed=0, dtype=F64)
    assert m.distance(x).max() < 1e-10
    x32, _ = m.sample(1000, seed=0)
    d32 = m.distance(x32)
    assert d32.dtype == torch.float32 and d32.max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_noisy_distance_matches_normal_noise(name):
    # |normal part of the noise|: half-normal for surfaces (mean sigma sqrt(2/pi)),
    # Rayleigh for curves in 3D (mean sigma sqrt(pi/2))
    sigma = 0.005
    m = make_manifold(name)
    x, _ = m.sample(3000, noise=sigma, seed=1, dtype=F64)
    mean = m.distance(x).mean().item()
    expected = sigma * (math.sqrt(math.pi / 2) if m.intrinsic_dim == 1 else math.sqrt(2 / math.pi))
    assert abs(mean / expected - 1) < 0.05


@pytest.mark.parametrize("name", NAMES)
def test_distance_shape_and_device(name):
    m = make_manifold(name)
    x = torch.randn(2, 5, 3)
    d = m.distance(x)
    assert d.shape == (2, 5) and d.dtype == torch.float32
    assert torch.allclose(d.reshape(-1), m.distance(x.reshape(-1, 3)))
    assert m.distance(torch.zeros(3)).shape == ()
    assert (d >= 0).all()


def _brute_force(x, dense):
    return torch.cdist(x, dense).min(-1).values


def test_sphere_distance_against_brute_force():
    sphere = Sphere(radius=1.5)
    # a dense Fibonacci lattice on the sphere: spacing about 0.013
    k = torch.arange(200_000, dtype=F64)
    z = 1 - (2 * k + 1) / 200_000
    phi = k * math.pi * (3 - math.sqrt(5))
    rho = (1 - z**2).sqrt()
    dense = 1.5 * torch.stack([rho * phi.cos(), rho * phi.sin(), z], -1)
    x = _query_points(100, 2.5)
    exact, brute = sphere.distance(x), _brute_force(x, dense)
    assert (brute >= exact - 1e-9).all() and (brute - exact).max() < 0.01
    assert torch.allclose(exact, (x.norm(dim=-1) - 1.5).abs())


def test_torus_distance_against_brute_force():
    torus = Torus(major_radius=1.0, minor_radius=0.35)
    u = torch.linspace(0, 2 * math.pi, 1000, dtype=F64)[:, None]
    v = torch.linspace(0, 2 * math.pi, 400, dtype=F64)[None, :]
    ring = 1.0 + 0.35 * v.cos()
    dense = torch.stack(
        [ring * u.cos(), ring * u.sin(), (0.35 * v.sin()).expand(1000, 400)], -1
    ).reshape(-1, 3)
    x = _query_points(80, 1.6, seed=1)
    exact, brute = torus.distance(x), _brute_force(x, dense)
    assert (brute >= exact - 1e-9).all() and (brute - exact).max() < 0.01


def test_swiss_roll_distance_against_brute_force():
    roll = SwissRoll()
    # the roll is spiral x segment: brute force over a very fine grid of the spiral
    t = torch.linspace(roll.t_min, roll.t_max, 300_001, dtype=F64)
    spiral = roll.spiral(t)
    x = _query_points(150, 1.6, seed=2)
    x[:5, :2] = 0.0  # points on the axis, near the centre of the roll
    x[5:10, 2] = 1.5  # points beyond the height range
    planar = torch.cat([_brute_force(p, spiral) for p in x[:, :2].split(50)])
    beyond = (x[:, 2].abs() - roll.height / 2).clamp_min(0)
    brute = torch.hypot(planar, beyond)
    exact = roll.distance(x)
    # the brute force minimises over a subset of the roll: exact <= brute <= exact + O(dt^2)
    assert (brute >= exact - 1e-9).all()
    assert (brute - exact).max() < 1e-7


def test_swiss_roll_normal_offsets_are_exact():
    # m + delta * n(m) is at distance |delta| while |delta| < the gap between windings / 2
    roll = SwissRoll()
    g = torch.Generator().manual_seed(3)
    t = roll.t_min + (roll.t_max - roll.t_min) * torch.rand(500, generator=g, dtype=F64)
    h = 0.9 * (torch.rand(500, generator=g, dtype=F64) - 0.5)
    delta = 0.2 * (torch.rand(500, generator=g, dtype=F64) - 0.5)
    tangent = torch.stack([t.cos() - t * t.sin(), t.sin() + t * t.cos()], -1)
    normal = torch.stack([tangent[:, 1], -tangent[:, 0]], -1) / tangent.norm(dim=-1, keepdim=True)
    planar = roll.spiral(t) + delta[:, None] * normal
    x = torch.cat([planar, h[:, None]], -1)
    assert torch.allclose(roll.distance(x), delta.abs(), atol=1e-12, rtol=0)


def test_swiss_roll_distance_gradient():
    roll = SwissRoll()
    x = _query_points(6, 1.5, seed=4).requires_grad_(True)
    (grad,) = torch.autograd.grad(roll.distance(x).sum(), x)
    eps = 1e-6
    for i in range(3):
        step = torch.zeros(3, dtype=F64)
        step[i] = eps
        numeric = (roll.distance(x.detach() + step) - roll.distance(x.detach() - step)) / (2 * eps)
        assert torch.allclose(grad[:, i], numeric, atol=1e-6)


def test_torus_normal_offsets_are_exact():
    torus = Torus(major_radius=2.0, minor_radius=0.5)
    g = torch.Generator().manual_seed(0)
    u, v = 2 * math.pi * torch.rand(2, 300, generator=g, dtype=F64)
    delta = 0.9 * (torch.rand(300, generator=g, dtype=F64) - 0.5)  # |delta| < 0.5
    normal = torch.stack([v.cos() * u.cos(), v.cos() * u.sin(), v.sin()], -1)
    core = 2.0 * torch.stack([u.cos(), u.sin(), torch.zeros_like(u)], -1)
    x = core + (0.5 + delta)[:, None] * normal
    assert torch.allclose(torus.distance(x), delta.abs(), atol=1e-12, rtol=0)


def test_linked_rings_distance_against_brute_force():
    rings = LinkedRings(radius=1.0)
    phi = torch.linspace(0, 2 * math.pi, 100_000, dtype=F64)
    zero = torch.zeros_like(phi)
    dense = torch.cat(
        [
            torch.stack([phi.cos(), phi.sin(), zero], -1),
            torch.stack([1 + phi.cos(), zero, phi.sin()], -1),
        ]
    )
    x = _query_points(100, 2.2, seed=5)
    exact, brute = rings.distance(x), _brute_force(x, dense)
    assert (brute >= exact - 1e-9).all() and (brute - exact).max() < 1e-4


def test_linked_rings_structure():
    rings = LinkedRings(radius=2.0)
    x, ring = rings.sample(2000, seed=0, dtype=F64)
    assert set(ring.tolist()) == {0, 1}
    assert abs((ring == 0).double().mean().item() - 0.5) < 0.05
    assert torch.allclose(x[ring == 0, 2], torch.zeros(1, dtype=F64))
    assert torch.allclose(x[ring == 1, 1], torch.zeros(1, dtype=F64))
    # disconnected: every point of ring 1 is at distance exactly r from ring 0
    other = x[ring == 1]
    to_ring0 = torch.hypot(other[:, :2].norm(dim=-1) - 2.0, other[:, 2])
    assert torch.allclose(to_ring0, torch.full((1,), 2.0, dtype=F64))
    # linked: ring 1 crosses the plane of ring 0 once inside and once outside its disc
    assert torch.allclose(
        rings.distance(torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]])), torch.zeros(2)
    )


def test_sphere_von_mises_fisher_bumps():
    kappa = 10.0
    sphere = Sphere(radius=2.0, concentration=kappa, num_components=4)
    x, bump = sphere.sample(8000, seed=0, dtype=F64)
    means = sphere.means
    assert torch.allclose(means.norm(dim=-1), torch.ones(1, dtype=F64))
    # E[mu^T x / r] = coth(kappa) - 1 / kappa for a von Mises-Fisher on the 2-sphere
    cosines = (x * means[bump]).sum(-1) / 2.0
    expected = 1 / math.tanh(kappa) - 1 / kappa
    assert abs(cosines.mean().item() - expected) < 0.01
    assert (torch.bincount(bump, minlength=4) - 2000).abs().max() < 200
    uniform, _ = Sphere(concentration=0.0).sample(8000, seed=1, dtype=F64)
    assert uniform.mean(0).abs().max() < 0.05  # uniform on the sphere: zero mean
    assert abs(uniform[:, 2].var().item() - 1 / 3) < 0.02


def test_torus_band_density():
    torus = Torus(winding=2, spread=0.0)
    x, labels = torus.sample(500, seed=0, dtype=F64)
    assert labels is None
    u = torch.atan2(x[:, 1], x[:, 0])
    v = torch.atan2(x[:, 2], x[:, :2].norm(dim=-1) - 1.0)
    wrapped = torch.remainder(v - 2 * u + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-9


def test_swiss_roll_sample_ranges():
    roll = SwissRoll(radius=2.0, height=3.0)
    x, labels = roll.sample(2000, seed=0, dtype=F64)
    assert labels is None
    r = x[:, :2].norm(dim=-1)
    assert r.max() <= 2.0 + 1e-12 and r.min() >= 2.0 * roll.t_min / roll.t_max - 1e-12
    assert x[:, 2].abs().max() <= 1.5


def test_make_manifold_and_repr():
    assert isinstance(make_manifold("torus", minor_radius=0.2), Torus)
    assert make_manifold("torus", minor_radius=0.2).minor_radius == 0.2
    assert repr(make_manifold("linked_rings")) == "LinkedRings(radius=1.0)"
    with pytest.raises(ValueError, match="name"):
        make_manifold("klein_bottle")
    with pytest.raises(TypeError):
        make_manifold("sphere", colour="red")


@pytest.mark.parametrize(
    "call, name, error",
    [
        (lambda: Sphere(radius=0.0), "radius", ValueError),
        (lambda: Sphere(concentration=-1.0), "concentration", ValueError),
        (lambda: Sphere(num_components=0), "num_components", ValueError),
        (lambda: Torus(major_radius=-1.0), "major_radius", ValueError),
        (lambda: Torus(minor_radius=1.5), "minor_radius", ValueError),
        (lambda: Torus(winding=1.5), "winding", TypeError),
        (lambda: Torus(spread=-0.1), "spread", ValueError),
        (lambda: SwissRoll(height=0.0), "height", ValueError),
        (lambda: SwissRoll(t_min=-1.0), "t_min", ValueError),
        (lambda: SwissRoll(t_max=1.0), "t_max", ValueError),
        (lambda: SwissRoll(num_grid=2), "num_grid", ValueError),
        (lambda: LinkedRings(radius=float("inf")), "radius", ValueError),
        (lambda: Sphere().sample(0), "num_samples", ValueError),
        (lambda: Sphere().sample(10, noise=-0.1), "noise", ValueError),
        (lambda: Sphere().sample(10, seed=-1), "seed", ValueError),
        (lambda: Sphere().sample(10, dtype=torch.int32), "dtype", TypeError),
        (lambda: Torus().distance(torch.zeros(4, 2)), "x", ValueError),
        (lambda: Torus().distance(torch.zeros(4, 3, dtype=torch.long)), "x", TypeError),
        (lambda: SwissRoll().distance([[0.0, 0.0, 0.0]]), "x", TypeError),
        (lambda: LinkedRings().distance(torch.full((2, 3), float("nan"))), "x", ValueError),
    ],
)
def test_bad_arguments(call, name, error):
    with pytest.raises(error, match=f"^{name}"):
        call()
