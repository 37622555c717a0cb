"""kmeans: k-means++ seeding, Lloyd's fixed point, seeded (constrained) clustering, generators."""

import torch

from pyro_manifold.nn import kmeans

F64 = torch.float64


def _blobs(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], dtype=F64)
    which = torch.randint(0, 3, (n,), generator=g)
    return centres[which] + torch.randn(n, 2, generator=g, dtype=F64), which


def test_finds_separated_clusters_at_a_lloyd_fixed_point():
    x, which = _blobs()
    centroids, assignment = kmeans(x, 3, 50, generator=torch.Generator().manual_seed(0))
    # a fixed point: every row is nearest its own centroid, every centroid its cluster's mean
    assert torch.equal(torch.cdist(x, centroids).argmin(-1), assignment)
    for j in range(3):
        torch.testing.assert_close(centroids[j], x[assignment == j].mean(0))
    # the same partition as the generating one, up to the clusters' order
    pairs = {(int(a), int(w)) for a, w in zip(assignment, which, strict=True)}
    assert len(pairs) == 3


def test_a_seeded_generator_repeats_and_draws_on_its_own_device():
    x, _ = _blobs()
    runs = [kmeans(x, 3, 0, generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    torch.manual_seed(0)
    global_state = kmeans(x, 3, 0)[0]
    torch.manual_seed(0)
    assert torch.equal(global_state, kmeans(x, 3, 0)[0])  # None: the global random state


def test_labels_seed_the_clusters_and_keep_their_rows():
    x, which = _blobs()
    labels = torch.full_like(which, -1)
    cluster = which == which[5]
    labels[cluster] = 2  # one whole generating cluster, labelled 2
    centroids, assignment = kmeans(x, 3, 20, labels=labels.int())
    assert torch.equal(assignment[labels >= 0], labels[labels >= 0].long())
    torch.testing.assert_close(centroids[2], x[cluster].mean(0))
    assert assignment.dtype == torch.int64


def test_zero_iterations_keeps_the_seeding_and_identical_points_are_drawn_uniformly():
    x = torch.ones(5, 2)
    centroids, assignment = kmeans(x, 3, 0)
    assert torch.equal(centroids, torch.ones(3, 2))
    assert assignment.shape == (5,)
