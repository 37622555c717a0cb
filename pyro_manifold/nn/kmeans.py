r"""k-means: k-means++ seeding, then Lloyd iterations; optionally seeded by labels."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_manifold._validation import check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["kmeans"]


def kmeans(
    x: Tensor,
    num_clusters: int,
    num_iterations: int = 20,
    *,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Cluster the rows of ``x`` by k-means: k-means++ seeding, then Lloyd iterations.

    Lloyd's iterations minimise the within-cluster sum of squares

    .. math::

        \sum_{n=1}^N \lVert x_n - c_{a_n}\rVert^2, \qquad
        a_n = \arg\min_k \lVert x_n - c_k\rVert, \qquad
        c_k = \frac{1}{|\{n : a_n = k\}|}\sum_{n : a_n = k} x_n,

    alternating the two updates up to ``num_iterations`` times and stopping early once
    the assignment no longer changes; a cluster left empty keeps its centroid. The
    centroids start by k-means++ (Arthur & Vassilvitskii, 2007): the first is a uniformly
    drawn row, each further one a row drawn with probability proportional to its squared
    distance to the nearest centroid chosen so far (uniformly when all are zero).

    With ``labels`` (``-1`` = unlabelled) the k-means is seeded and constrained (Basu et
    al., 2002): cluster :math:`k` starts at the mean of the rows labelled :math:`k`
    (k-means++ fills the clusters without labels, in order) and labelled rows stay in
    their cluster.

    The random draws come from ``generator`` (on its device, so a seeded CPU generator
    gives the same clustering on every device), or from the global random state when it
    is ``None``. Everything else runs in ``x``'s dtype on ``x``'s device.

    Args:
        x: the points, :math:`(N, D)`, floating point, :math:`N \ge K`.
        num_clusters: :math:`K`.
        num_iterations: the most Lloyd iterations (0 keeps the seeding).
        labels: optional :math:`(N,)` integer labels in :math:`[0, K)` or ``-1`` (on any
            device).
        generator: the random generator of the seeding.

    Returns:
        ``(centroids, assignment)``: :math:`(K, D)` in ``x``'s dtype and the cluster of
        each row, :math:`(N,)` int64 (equal to ``labels`` where ``labels >= 0``).

    Example:
        >>> x = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5])
        >>> centroids, assignment = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(centroids[:, 0].round().tolist()), assignment.bincount().tolist()
        ([-5.0, 5.0], [50, 50])

    References:
        k-means++: The Advantages of Careful Seeding. David Arthur, Sergei Vassilvitskii,
        2007. Semi-supervised Clustering by Seeding. Sugato Basu, Arindam Banerjee,
        Raymond Mooney, 2002.
    """
    check_tensor("x", x, min_dim=2)
    k = check_positive_int("num_clusters", num_clusters)
    check_positive_int("num_iterations", num_iterations, minimum=0)
    if x.dim() != 2 or x.shape[0] < k:
        raise ArgumentError(
            f"x: expected shape (N, D) with N >= num_clusters = {k}, got shape {tuple(x.shape)}"
        )
    if labels is not None:
        check_tensor("labels", labels, event_shape=(x.shape[0],), floating=False, finite=False)
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ArgumentTypeError(
                f"labels: expected an (N,) integer tensor, got dtype {labels.dtype}"
            )
        if bool(((labels < -1) | (labels >= k)).any()):
            raise ArgumentError(
                f"labels: expected labels in [-1, {k - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        labels = labels.to(x.device, torch.int64)
    draw_device = x.device if generator is None else generator.device
    centroids: list[Tensor | None] = [None] * k
    if labels is not None:
        for j in range(k):
            if bool((labels == j).any()):
                centroids[j] = x[labels == j].mean(0)
    for j in range(k):
        if centroids[j] is not None:
            continue
        chosen = [c for c in centroids if c is not None]
        if not chosen:
            pick = torch.randint(x.shape[0], (1,), generator=generator, device=draw_device)
        else:
            d2 = torch.cdist(x, torch.stack(chosen)).min(-1).values.pow(2)
            weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
            pick = torch.multinomial(weights.to(draw_device), 1, generator=generator)
        centroids[j] = x[pick.to(x.device)].squeeze(0)
    c = torch.stack(centroids)  # type: ignore[arg-type]

    def assign(c: Tensor) -> Tensor:
        nearest = torch.cdist(x, c).argmin(-1)
        return nearest if labels is None else torch.where(labels >= 0, labels, nearest)

    assignment = assign(c)
    for _ in range(num_iterations):
        counts = torch.bincount(assignment, minlength=k).unsqueeze(-1)
        sums = torch.zeros_like(c).index_add_(0, assignment, x)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new = assign(c)
        if torch.equal(new, assignment):
            break
        assignment = new
    return c, assignment
