r"""Scores that compare a clustering with reference labels: accuracy, NMI, ARI."""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from pyro_manifold._validation import check_positive_int
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "adjusted_rand_index",
    "clustering_accuracy",
    "contingency_table",
    "normalized_mutual_information",
]


def _as_labels(name: str, x: object) -> Tensor:
    """Return ``x`` as a 1-D integer tensor of codes ``0..K-1`` (sorted label order)."""
    wrong = ArgumentTypeError(
        f"{name}: expected a 1-D tensor, array or sequence of ints, got {type(x).__name__}"
    )
    if isinstance(x, str | bytes):
        raise wrong
    try:
        t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise wrong from None
    if t.is_floating_point() or t.is_complex():
        raise ArgumentTypeError(f"{name}: expected integer labels, got a tensor of dtype {t.dtype}")
    if t.dim() != 1 or t.numel() == 0:
        raise ArgumentError(f"{name}: expected a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    return torch.unique(t.cpu(), return_inverse=True)[1]


def _counts(pred: object, labels: object, num_clusters: int | None = None) -> Tensor:
    """Contingency counts, shape ``(num_clusters, num_classes)``, float64.

    Rows are the distinct values of ``pred`` in sorted order, or, with ``num_clusters``,
    the cluster indices ``0 .. num_clusters - 1`` themselves (empty clusters included).
    """
    p = _as_labels("pred", pred)
    c = _as_labels("labels", labels)
    if p.shape != c.shape:
        raise ArgumentError(
            f"labels: expected the same length as pred ({p.numel()}), got {c.numel()}"
        )
    if num_clusters is None:
        num_clusters = int(p.max()) + 1
    else:
        num_clusters = check_positive_int("num_clusters", num_clusters)
        raw = torch.as_tensor(pred).cpu()
        if bool((raw < 0).any()) or bool((raw >= num_clusters).any()):
            raise ArgumentError(
                f"pred: expected cluster indices in [0, {num_clusters - 1}] (num_clusters = "
                f"{num_clusters}), got values in [{int(raw.min())}, {int(raw.max())}]"
            )
        p = raw.long()
    num_classes = int(c.max()) + 1
    flat = torch.bincount(p * num_classes + c, minlength=num_clusters * num_classes)
    return flat.reshape(num_clusters, num_classes).to(torch.float64)


def contingency_table(
    pred: Tensor,
    labels: Tensor,
    normalize: bool | str = True,
    num_clusters: int | None = None,
) -> Tensor:
    r"""Joint counts (or frequencies) of cluster assignments and class labels.

    .. math::

        C_{ij} = \#\{n : \text{pred}_n = a_i,\ \text{labels}_n = b_j\}

    with :math:`a_1 < a_2 < \dots` the distinct values of ``pred`` (or, with
    ``num_clusters``, :math:`a_i = i - 1` for every cluster, so that empty clusters keep
    their row) and :math:`b_1 < b_2 < \dots` those of ``labels``.

    Args:
        pred: cluster assignments, integers of shape :math:`(N,)`.
        labels: reference classes, integers of shape :math:`(N,)`.
        normalize: ``True`` (or ``"all"``) divides by :math:`N` so that the table sums to
            one; ``"class"`` divides each column by its class size, so that each column
            sums to one (Pires & Figueiredo's table 1); ``False`` keeps the counts.
        num_clusters: the number of clusters :math:`K`; ``pred`` must then hold indices in
            :math:`[0, K)`, and the table has :math:`K` rows.

    Returns:
        A float64 tensor of shape ``(num_clusters, num_classes)``.

    Example:
        >>> contingency_table(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 7, 7, 7]), False)
        tensor([[1., 1.],
                [0., 2.]], dtype=torch.float64)
        >>> contingency_table(torch.tensor([0, 0, 2, 2]), torch.tensor([5, 7, 7, 7]),
        ...                   normalize="class", num_clusters=3)
        tensor([[1.0000, 0.3333],
                [0.0000, 0.0000],
                [0.0000, 0.6667]], dtype=torch.float64)
    """
    if normalize not in (True, False, "all", "class"):
        raise ArgumentError(f"normalize: expected True, False, 'all' or 'class', got {normalize!r}")
    counts = _counts(pred, labels, num_clusters)
    if normalize == "class":
        return counts / counts.sum(0, keepdim=True)
    return counts / counts.sum() if normalize in (True, "all") else counts


def clustering_accuracy(pred: Tensor, labels: Tensor) -> float:
    r"""Fraction of points classified correctly under the best one-to-one cluster matching.

    .. math::

        \operatorname{acc} = \max_{\pi} \frac1N \sum_{n=1}^N
        \mathbb{1}[\pi(\text{pred}_n) = \text{labels}_n],

    the maximum over injective matchings :math:`\pi` between clusters and classes,
    found with the Hungarian algorithm. When the numbers differ, the clusters (or
    classes) left unmatched count as errors.

    Args:
        pred: cluster assignments, integers of shape :math:`(N,)`.
        labels: reference classes, integers of shape :math:`(N,)`.

    Returns:
        The accuracy in :math:`[0, 1]`.

    Example:
        >>> clustering_accuracy(torch.tensor([1, 1, 0, 0, 2]), torch.tensor([0, 0, 1, 1, 1]))
        0.8
    """
    counts = _counts(pred, labels)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def _entropy(p: Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def normalized_mutual_information(pred: Tensor, labels: Tensor) -> float:
    r"""Mutual information of two labelings, normalised by the mean of their entropies.

    .. math::

        \operatorname{NMI} = \frac{I(A; B)}{\tfrac12\,(H(A) + H(B))}, \qquad
        I(A; B) = \sum_{ij} P_{ij} \log \frac{P_{ij}}{P_{i\cdot} P_{\cdot j}},

    with :math:`P` the normalised :func:`contingency_table` (the arithmetic-mean
    normalisation, scikit-learn's default). It is 1 for labelings equal up to renaming
    and 0 for independent ones; two one-cluster labelings score 1.

    Args:
        pred: cluster assignments, integers of shape :math:`(N,)`.
        labels: reference classes, integers of shape :math:`(N,)`.

    Returns:
        The NMI in :math:`[0, 1]`.

    Example:
        >>> normalized_mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([3, 3, 2, 2]))
        1.0
    """
    joint = contingency_table(pred, labels)
    if joint.shape[0] == joint.shape[1] == 1:
        return 1.0
    row, col = joint.sum(1), joint.sum(0)
    nz = joint > 0
    outer = row[:, None] * col[None, :]
    mutual_info = max(float((joint[nz] * (joint[nz].log() - outer[nz].log())).sum()), 0.0)
    if mutual_info == 0.0:
        return 0.0
    normalizer = 0.5 * (_entropy(row) + _entropy(col))
    return min(mutual_info / max(normalizer, 1e-300), 1.0)


def adjusted_rand_index(pred: Tensor, labels: Tensor) -> float:
    r"""Rand index of two labelings corrected for chance (Hubert and Arabie).

    With :math:`n_{ij}` the :func:`contingency_table` counts, :math:`a_i, b_j` its row
    and column sums and :math:`\binom{\cdot}{2}` the number of pairs,

    .. math::

        \operatorname{ARI} = \frac{\sum_{ij} \binom{n_{ij}}{2} - E}
        {\tfrac12\left[\sum_i \binom{a_i}{2} + \sum_j \binom{b_j}{2}\right] - E},
        \qquad E = \frac{\sum_i \binom{a_i}{2} \sum_j \binom{b_j}{2}}{\binom{N}{2}}.

    It is 1 for labelings equal up to renaming, about 0 in expectation for independent
    ones, and can be negative. When the denominator vanishes (both labelings put all
    points in one cluster, or each point in its own) the labelings agree and it is 1.

    Args:
        pred: cluster assignments, integers of shape :math:`(N,)`.
        labels: reference classes, integers of shape :math:`(N,)`.

    Returns:
        The ARI, at most 1.

    Example:
        >>> adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2]))
        0.5714...

    References:
        Comparing partitions. Lawrence Hubert, Phipps Arabie, Journal of
        Classification 2, 1985.
    """
    counts = _counts(pred, labels)

    def pairs(n: Tensor) -> float:
        return float((n * (n - 1) / 2).sum())

    n = float(counts.sum())
    index = pairs(counts)
    rows, cols = pairs(counts.sum(1)), pairs(counts.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    denominator = 0.5 * (rows + cols) - expected
    if math.isclose(denominator, 0.0, abs_tol=1e-12):
        return 1.0
    return (index - expected) / denominator
