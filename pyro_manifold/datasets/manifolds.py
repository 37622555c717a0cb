r"""Toy manifolds in :math:`\mathbb R^3` with a density on them and an exact distance to them.

Each manifold :math:`\mathcal M` has an intrinsic dimension (1 or 2), a sampler
:meth:`ToyManifold.sample` that draws points on :math:`\mathcal M` and optionally moves
them off it by isotropic Gaussian noise,

.. math::

    x = m + \sigma\varepsilon,\qquad m \sim p_{\mathcal M},\ \varepsilon \sim \mathcal N(0, I_3),

and :meth:`ToyManifold.distance`, the Euclidean distance
:math:`d(x, \mathcal M) = \min_{m \in \mathcal M} \lVert x - m \rVert`, used to score how
close a model's samples lie to the manifold. For noisy points :math:`d \approx \sigma
\lVert\varepsilon_\perp\rVert`, whose mean is :math:`\sigma\sqrt{2/\pi}` for a surface
and :math:`\sigma\sqrt{\pi/2}` for a curve (while :math:`\sigma` is small compared with the
curvature radii).

Example:
    >>> torus = make_manifold("torus")
    >>> x, _ = torus.sample(100, seed=0, dtype=torch.float64)
    >>> float(torus.distance(x).max()) < 1e-12
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_manifold._validation import (
    check_choice,
    check_positive,
    check_positive_int,
    check_tensor,
)
from pyro_manifold.datasets._common import (
    ToyData,
    check_dtype,
    check_seed,
    make_generator,
    rand,
    randint,
    randn,
)
from pyro_manifold.errors import ArgumentError

__all__ = [
    "LinkedRings",
    "Sphere",
    "SwissRoll",
    "ToyManifold",
    "Torus",
    "make_manifold",
]


class ToyManifold:
    r"""Base class of the toy manifolds: a density on a manifold in :math:`\mathbb R^3`.

    Subclasses set ``intrinsic_dim`` and implement ``_sample_on_manifold(num_samples,
    generator)`` (float64 points and labels or ``None``) and ``_distance(x)``.

    Attributes:
        intrinsic_dim: dimension of the manifold (1 for curves, 2 for surfaces).
        ambient_dim: dimension of the ambient space, 3.

    Example:
        >>> sphere = Sphere()
        >>> isinstance(sphere, ToyManifold), sphere.intrinsic_dim, sphere.ambient_dim
        (True, 2, 3)
    """

    intrinsic_dim: int = 0
    ambient_dim: int = 3

    def sample(
        self,
        num_samples: int,
        *,
        noise: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> ToyData:
        r"""Draw points from the density on the manifold, plus optional Gaussian noise.

        .. math::

            x = m + \sigma\varepsilon,\qquad m \sim p_{\mathcal M},\
            \varepsilon \sim \mathcal N(0, I_3).

        Args:
            num_samples: number of points :math:`N`.
            noise: :math:`\sigma`, standard deviation of the isotropic off-manifold noise
                (0 keeps the points on the manifold).
            seed: seed of the local random generator (the global one is untouched).
            dtype: floating-point dtype of ``data``; the draw is made in float64 and cast.

        Returns:
            :class:`ToyData` with ``data`` :math:`(N, 3)` and ``labels`` :math:`(N,)`
            int64 (or ``None`` for manifolds without labels).

        Example:
            >>> x, ring = LinkedRings().sample(10, noise=0.1, seed=3)
            >>> x.shape, ring.shape
            (torch.Size([10, 3]), torch.Size([10]))
        """
        check_positive_int("num_samples", num_samples)
        noise = check_positive("noise", noise, allow_zero=True)
        check_seed(seed)
        check_dtype(dtype)
        generator = make_generator(seed)
        points, labels = self._sample_on_manifold(num_samples, generator)
        if noise > 0:
            points = points + noise * randn(generator, num_samples, 3)
        return ToyData(points.to(dtype), labels)

    def distance(self, x: Tensor) -> Tensor:
        r"""Return the Euclidean distance :math:`\min_{m\in\mathcal M}\lVert x - m\rVert`.

        Args:
            x: points :math:`(*, 3)`, floating point.

        Returns:
            The distances, shape :math:`(*)`, in the dtype and on the device of ``x``.

        Example:
            >>> Sphere(radius=2.0).distance(torch.tensor([[0.0, 0.0, 3.0], [0.5, 0.0, 0.0]]))
            tensor([1.0000, 1.5000])
        """
        check_tensor("x", x, event_shape=(3,))
        return self._distance(x)

    def _sample_on_manifold(
        self, num_samples: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _distance(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> dict[str, object]:
        return {}


def _circle_distance(
    x: Tensor, centre: tuple[float, float, float], normal: int, radius: float
) -> Tensor:
    """Distance from ``x`` (*, 3) to a circle orthogonal to the axis ``normal``.

    The circle has radius ``radius`` about ``centre``.
    """
    offset = x - x.new_tensor(centre)
    height = offset[..., normal]
    in_plane = torch.cat([offset[..., :normal], offset[..., normal + 1 :]], -1)
    rho = torch.linalg.vector_norm(in_plane, dim=-1)
    return torch.hypot(rho - radius, height)


def _fibonacci_directions(num: int) -> Tensor:
    """``num`` well-spread unit vectors (the Fibonacci lattice), float64 (num, 3)."""
    k = torch.arange(num, dtype=torch.float64)
    z = 1 - (2 * k + 1) / num
    phi = k * math.pi * (3 - math.sqrt(5))
    rho = torch.sqrt(1 - z**2)
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], -1)


class Sphere(ToyManifold):
    r"""The sphere of radius :math:`r` with a mixture of von Mises–Fisher bumps on it.

    The density is the equal-weight mixture of ``num_components`` von Mises–Fisher
    distributions with concentration :math:`\kappa` and mean directions :math:`\mu_k` spread
    over the sphere (a Fibonacci lattice; for 4 components they are close to a
    tetrahedron's vertices):

    .. math::

        p(m) = \frac1K\sum_{k=1}^{K}
        \frac{\kappa}{4\pi r^2 \sinh\kappa}\exp\left(\kappa\,\mu_k^\top m / r\right),\qquad
        d(x, \mathcal M) = \bigl|\lVert x\rVert - r\bigr|.

    :math:`\kappa = 0` gives the uniform distribution. The cosine
    :math:`w = \mu_k^\top m / r` is drawn exactly by inverting its distribution function,
    :math:`w = 1 + \kappa^{-1}\log\bigl(u + (1 - u)e^{-2\kappa}\bigr)`.

    Args:
        radius: :math:`r`.
        concentration: :math:`\kappa \ge 0` of every bump.
        num_components: :math:`K`, the number of bumps.

    Labels are the bump index in ``[0, K)``.

    Example:
        >>> sphere = Sphere(radius=2.0, concentration=20.0)
        >>> x, bump = sphere.sample(1000, dtype=torch.float64)
        >>> torch.allclose(x.norm(dim=-1), torch.tensor(2.0, dtype=torch.float64))
        True
        >>> sorted(bump.unique().tolist())
        [0, 1, 2, 3]
    """

    intrinsic_dim = 2

    def __init__(
        self, radius: float = 1.0, concentration: float = 10.0, num_components: int = 4
    ) -> None:
        self.radius = check_positive("radius", radius)
        self.concentration = check_positive("concentration", concentration, allow_zero=True)
        self.num_components = check_positive_int("num_components", num_components)

    @property
    def means(self) -> Tensor:
        """Unit mean directions of the bumps, float64 :math:`(K, 3)`."""
        return _fibonacci_directions(self.num_components)

    def _sample_on_manifold(self, num_samples: int, generator: torch.Generator):
        labels = randint(generator, self.num_components, num_samples)
        u = 1.0 - rand(generator, num_samples)  # in (0, 1]
        phi = 2 * math.pi * rand(generator, num_samples)
        kappa = self.concentration
        if kappa == 0:
            w = 2 * u - 1
        else:
            w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
        w = w.clamp(-1.0, 1.0)
        mu = self.means[labels]
        # an orthonormal frame (e1, e2) orthogonal to each mean
        helper = torch.where(
            (mu[:, :1].abs() < 0.9), mu.new_tensor([1.0, 0.0, 0.0]), mu.new_tensor([0.0, 1.0, 0.0])
        )
        e1 = helper - (helper * mu).sum(-1, keepdim=True) * mu
        e1 = e1 / torch.linalg.vector_norm(e1, dim=-1, keepdim=True)
        e2 = torch.linalg.cross(mu, e1, dim=-1)
        side = torch.sqrt((1 - w**2).clamp_min(0))[:, None]
        direction = w[:, None] * mu + side * (
            torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2
        )
        return self.radius * direction, labels

    def _distance(self, x: Tensor) -> Tensor:
        return (torch.linalg.vector_norm(x, dim=-1) - self.radius).abs()

    def _repr_args(self):
        return {
            "radius": self.radius,
            "concentration": self.concentration,
            "num_components": self.num_components,
        }


class Torus(ToyManifold):
    r"""A ring torus with a density concentrated on a band that winds around it.

    With angles :math:`u` (around the :math:`z` axis) and :math:`v` (around the tube),

    .. math::

        m(u, v) = \bigl((R + r\cos v)\cos u,\ (R + r\cos v)\sin u,\ r\sin v\bigr),\qquad
        u \sim \mathcal U[0, 2\pi),\quad v = n u + s\,\varepsilon,\ \varepsilon\sim\mathcal N(0,1),

    so the points gather around the closed curve :math:`v = n u` that winds :math:`n` times
    around the tube (a wrapped normal of width :math:`s` across it). The distance is
    exact because the torus is the set of points at distance :math:`r` from its core circle:

    .. math::

        d(x, \mathcal M) = \Bigl|\sqrt{\bigl(\sqrt{x_1^2 + x_2^2} - R\bigr)^2 + x_3^2} - r\Bigr|.

    Args:
        major_radius: :math:`R`, radius of the core circle.
        minor_radius: :math:`r < R`, radius of the tube.
        winding: :math:`n \ge 0`, turns of the band around the tube per turn around the axis.
        spread: :math:`s \ge 0`, width (in radians) of the band across the tube.

    Labels are ``None``.

    Example:
        >>> torus = Torus(major_radius=2.0, minor_radius=0.5)
        >>> torus.distance(torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
        tensor([0.5000, 0.5000])
    """

    intrinsic_dim = 2

    def __init__(
        self,
        major_radius: float = 1.0,
        minor_radius: float = 0.35,
        winding: int = 3,
        spread: float = 0.4,
    ) -> None:
        self.major_radius = check_positive("major_radius", major_radius)
        self.minor_radius = check_positive("minor_radius", minor_radius)
        if self.minor_radius >= self.major_radius:
            raise ArgumentError(
                f"minor_radius: expected a number below major_radius={self.major_radius} "
                f"(a ring torus), got {self.minor_radius}"
            )
        self.winding = check_positive_int("winding", winding, minimum=0)
        self.spread = check_positive("spread", spread, allow_zero=True)

    def _sample_on_manifold(self, num_samples: int, generator: torch.Generator):
        u = 2 * math.pi * rand(generator, num_samples)
        v = self.winding * u + self.spread * randn(generator, num_samples)
        ring = self.major_radius + self.minor_radius * torch.cos(v)
        points = torch.stack(
            [ring * torch.cos(u), ring * torch.sin(u), self.minor_radius * torch.sin(v)], -1
        )
        return points, None

    def _distance(self, x: Tensor) -> Tensor:
        return (
            _circle_distance(x, (0.0, 0.0, 0.0), 2, self.major_radius) - self.minor_radius
        ).abs()

    def _repr_args(self):
        return {
            "major_radius": self.major_radius,
            "minor_radius": self.minor_radius,
            "winding": self.winding,
            "spread": self.spread,
        }


class SwissRoll(ToyManifold):
    r"""The Swiss roll: an Archimedean spiral in the :math:`(x_1, x_2)` plane times a segment.

    .. math::

        m(t, h) = \bigl(a\,t\cos t,\ a\,t\sin t,\ h\bigr),\qquad
        t \sim \mathcal U[t_0, t_1],\quad h \sim \mathcal U[-H/2, H/2],\quad a = \rho / t_1,

    so the outermost point of the spiral lies at radius :math:`\rho`. As in scikit-learn's
    ``make_swiss_roll``, :math:`t` is uniform, so the density per unit area falls as
    :math:`1/\lVert c'(t)\rVert = 1/(a\sqrt{1+t^2})` towards the outside of the roll.

    The surface is the product of the spiral :math:`c` and the segment, so

    .. math::

        d(x, \mathcal M)^2 = \min_{t\in[t_0, t_1]} \lVert (x_1, x_2) - c(t)\rVert^2
        + \max\bigl(0, |x_3| - H/2\bigr)^2.

    The minimum over :math:`t` has no closed form; it is found by a grid search over
    ``num_grid`` values of :math:`t`, keeping the four best local minima of the grid,
    each refined by golden-section search on its bracket and three Newton steps. The
    result agrees with a brute-force minimum to about machine precision. Gradients with
    respect to ``x`` are exact (the envelope theorem: the minimiser is held fixed).

    Args:
        radius: :math:`\rho`, the radius of the spiral at :math:`t_1`.
        height: :math:`H`, the extent of the roll along :math:`x_3`.
        t_min: :math:`t_0 \ge 0`, the spiral parameter where the roll starts (inside).
        t_max: :math:`t_1 > t_0`, where it ends (outside).
        num_grid: number of grid values of :math:`t` in the distance search.

    Labels are ``None``.

    Example:
        >>> roll = SwissRoll()
        >>> x, _ = roll.sample(200, noise=0.0, dtype=torch.float64)
        >>> float(roll.distance(x).max()) < 1e-10
        True
        >>> roll.distance(torch.tensor([[0.0, 0.0, 3.0]])).shape
        torch.Size([1])
    """

    intrinsic_dim = 2

    def __init__(
        self,
        radius: float = 1.0,
        height: float = 2.0,
        t_min: float = 1.5 * math.pi,
        t_max: float = 4.5 * math.pi,
        num_grid: int = 1024,
    ) -> None:
        self.radius = check_positive("radius", radius)
        self.height = check_positive("height", height)
        self.t_min = check_positive("t_min", t_min, allow_zero=True)
        self.t_max = check_positive("t_max", t_max)
        if self.t_max <= self.t_min:
            raise ArgumentError(f"t_max: expected a number above t_min={self.t_min}, got {t_max}")
        self.num_grid = check_positive_int("num_grid", num_grid, minimum=3)

    @property
    def scale(self) -> float:
        r""":math:`a = \rho / t_1`, the spiral's growth of radius per radian."""
        return self.radius / self.t_max

    def spiral(self, t: Tensor) -> Tensor:
        r"""Return the planar spiral :math:`c(t) = a t (\cos t, \sin t)`, shape :math:`(*, 2)`.

        Example:
            >>> roll = SwissRoll(radius=2.0, t_min=0.0, t_max=math.pi)
            >>> roll.spiral(torch.tensor([0.0, math.pi / 2])).round(decimals=6).abs()
            tensor([[0., 0.],
                    [0., 1.]])
        """
        at = self.scale * t
        return torch.stack([at * torch.cos(t), at * torch.sin(t)], -1)

    def _sample_on_manifold(self, num_samples: int, generator: torch.Generator):
        t = self.t_min + (self.t_max - self.t_min) * rand(generator, num_samples)
        h = self.height * (rand(generator, num_samples) - 0.5)
        return torch.cat([self.spiral(t), h[:, None]], -1), None

    def _squared_planar(self, px: Tensor, py: Tensor, t: Tensor) -> Tensor:
        at = self.scale * t
        return (px - at * torch.cos(t)) ** 2 + (py - at * torch.sin(t)) ** 2

    def _closest_parameter(self, p: Tensor) -> Tensor:
        """The minimiser :math:`t^*` of the planar distance for points ``p`` (n, 2)."""
        n = p.shape[0]
        px, py = p[:, :1], p[:, 1:]
        grid = torch.linspace(self.t_min, self.t_max, self.num_grid, dtype=p.dtype, device=p.device)
        step = grid[1] - grid[0]
        f = self._squared_planar(px, py, grid)  # (n, G)
        padded = torch.nn.functional.pad(f, (1, 1), value=math.inf)
        is_min = (f <= padded[:, :-2]) & (f <= padded[:, 2:])
        k = min(4, self.num_grid)
        idx = torch.where(is_min, f, math.inf).topk(k, dim=-1, largest=False).indices
        centre = grid[idx]  # (n, k)
        lo = (centre - step).clamp_min(self.t_min)
        hi = (centre + step).clamp_max(self.t_max)
        ends = torch.cat([lo, hi], -1)
        # golden-section search on each bracket
        ratio = (math.sqrt(5) - 1) / 2
        c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fc, fd = self._squared_planar(px, py, c), self._squared_planar(px, py, d)
        for _ in range(16):  # shrinks the bracket 2000-fold
            left = fc < fd  # the minimum lies in [lo, d]
            lo, hi = torch.where(left, lo, c), torch.where(left, d, hi)
            new = torch.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
            fnew = self._squared_planar(px, py, new)
            c, d = torch.where(left, new, d), torch.where(left, c, new)
            fc, fd = torch.where(left, fnew, fd), torch.where(left, fc, fnew)
        t = (lo + hi) / 2
        ft = self._squared_planar(px, py, t)
        # Newton steps on f'(t) = 0 (quadratic convergence), kept only where they lower f
        a = self.scale
        for _ in range(3):
            cos, sin = torch.cos(t), torch.sin(t)
            rx, ry = a * t * cos - px, a * t * sin - py
            dx, dy = a * (cos - t * sin), a * (sin + t * cos)
            ddx, ddy = a * (-2 * sin - t * cos), a * (2 * cos - t * sin)
            grad = rx * dx + ry * dy
            hess = dx**2 + dy**2 + rx * ddx + ry * ddy
            step_t = torch.where(hess > 0, grad / hess, torch.zeros_like(t))
            trial = (t - step_t).clamp(self.t_min, self.t_max)
            ftrial = self._squared_planar(px, py, trial)
            better = ftrial < ft
            t, ft = torch.where(better, trial, t), torch.where(better, ftrial, ft)
        # a minimum at an end of the spiral sits on a bracket end: include those exactly
        t = torch.cat([t, ends], -1)
        ft = torch.cat([ft, self._squared_planar(px, py, ends)], -1)
        best = ft.argmin(dim=-1, keepdim=True)
        return t.gather(-1, best).reshape(n)

    def _distance(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, 3)
        with torch.no_grad():
            chunk = max(1, 2**22 // self.num_grid)
            parts = [self._closest_parameter(p) for p in flat.detach()[:, :2].split(chunk)]
            t = torch.cat(parts)
        planar = torch.linalg.vector_norm(flat[:, :2] - self.spiral(t), dim=-1)
        beyond = (flat[:, 2].abs() - self.height / 2).clamp_min(0)
        return torch.hypot(planar, beyond).reshape(x.shape[:-1])

    def _repr_args(self):
        return {
            "radius": self.radius,
            "height": self.height,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "num_grid": self.num_grid,
        }


class LinkedRings(ToyManifold):
    r"""Two circles of radius :math:`r` linked like chain links: a disconnected 1D manifold.

    Ring 0 lies in the :math:`(x_1, x_2)` plane centred at the origin, ring 1 in the
    :math:`(x_1, x_3)` plane centred at :math:`(r, 0, 0)`; each passes through the other's
    disc, and every point of one ring lies at distance exactly :math:`r` from the other (so
    the two components are well separated). A point picks a ring with probability
    :math:`\tfrac12` and a uniform angle on it:

    .. math::

        m = \begin{cases} r(\cos\phi, \sin\phi, 0) & \text{ring } 0\\
        (r + r\cos\phi, 0, r\sin\phi) & \text{ring } 1\end{cases},\qquad
        d(x, \mathcal M) = \min_{j} \sqrt{(\rho_j - r)^2 + h_j^2},

    with :math:`h_j` the height of :math:`x` above ring :math:`j`'s plane and :math:`\rho_j`
    its distance from ring :math:`j`'s centre within that plane.

    Args:
        radius: :math:`r`, the radius of both rings.

    Labels are the ring index, 0 or 1.

    Example:
        >>> rings = LinkedRings()
        >>> rings.distance(torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
        tensor([1., 0.])
    """

    intrinsic_dim = 1

    def __init__(self, radius: float = 1.0) -> None:
        self.radius = check_positive("radius", radius)

    def _sample_on_manifold(self, num_samples: int, generator: torch.Generator):
        labels = randint(generator, 2, num_samples)
        phi = 2 * math.pi * rand(generator, num_samples)
        r = self.radius
        cos, sin, zero = r * torch.cos(phi), r * torch.sin(phi), torch.zeros_like(phi)
        ring0 = torch.stack([cos, sin, zero], -1)
        ring1 = torch.stack([r + cos, zero, sin], -1)
        return torch.where((labels == 0)[:, None], ring0, ring1), labels

    def _distance(self, x: Tensor) -> Tensor:
        r = self.radius
        return torch.minimum(
            _circle_distance(x, (0.0, 0.0, 0.0), 2, r), _circle_distance(x, (r, 0.0, 0.0), 1, r)
        )

    def _repr_args(self):
        return {"radius": self.radius}


_MANIFOLDS: dict[str, type[ToyManifold]] = {
    "linked_rings": LinkedRings,
    "sphere": Sphere,
    "swiss_roll": SwissRoll,
    "torus": Torus,
}


def make_manifold(name: str, **kwargs: object) -> ToyManifold:
    r"""Build a toy manifold by name.

    Args:
        name: ``"sphere"``, ``"torus"``, ``"swiss_roll"`` or ``"linked_rings"``.
        **kwargs: passed to the class's constructor.

    Returns:
        The :class:`ToyManifold`.

    Example:
        >>> make_manifold("sphere", radius=2.0)
        Sphere(radius=2.0, concentration=10.0, num_components=4)
    """
    check_choice("name", name, tuple(_MANIFOLDS))
    return _MANIFOLDS[name](**kwargs)  # type: ignore[arg-type]
