import math

import pytest
import torch

from pyro_manifold.metrics import (
    adjusted_rand_index,
    clustering_accuracy,
    contingency_table,
    normalized_mutual_information,
)


def test_permuted_labels_score_one():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (500,), generator=g)
    perm = torch.randperm(6, generator=g) + 10  # renamed clusters
    pred = perm[labels]
    assert clustering_accuracy(pred, labels) == 1.0
    assert normalized_mutual_information(pred, labels) == pytest.approx(1.0)
    assert adjusted_rand_index(pred, labels) == pytest.approx(1.0)


def test_contingency_table_by_hand():
    pred = torch.tensor([2, 2, 0, 0, 0, 1])
    labels = torch.tensor([1, 0, 0, 0, 1, 1])
    counts = contingency_table(pred, labels, normalize=False)
    expected = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(counts, expected)
    torch.testing.assert_close(contingency_table(pred, labels), expected / 6)


def test_contingency_table_keeps_empty_clusters_and_normalises_per_class():
    pred = torch.tensor([3, 3, 0, 0, 0, 3])  # clusters 1 and 2 are empty
    labels = torch.tensor([1, 0, 0, 0, 1, 1])
    counts = contingency_table(pred, labels, normalize=False, num_clusters=4)
    expected = torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(counts, expected)
    per_class = contingency_table(pred, labels, normalize="class", num_clusters=4)
    torch.testing.assert_close(per_class, expected / 3)  # three points per class
    torch.testing.assert_close(contingency_table(pred, labels, "all", 4), expected / 6)
    with pytest.raises(ValueError, match=r"pred: expected cluster indices in \[0, 2\] \(num"):
        contingency_table(pred, labels, num_clusters=3)
    with pytest.raises(ValueError, match="num_clusters: expected an int >= 1, got 0"):
        contingency_table(pred, labels, num_clusters=0)
    with pytest.raises(ValueError, match="normalize: expected True, False, 'all' or 'class', got"):
        contingency_table(pred, labels, normalize="rows")


def test_accuracy_by_hand_with_unequal_numbers():
    # clusters 0,1,2 vs classes a,b: best matching 0->a (3), 1->b (2); cluster 2 unmatched
    pred = torch.tensor([0, 0, 0, 1, 1, 2, 2, 0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    assert clustering_accuracy(pred, labels) == pytest.approx(5 / 8)
    # more classes than clusters: the swap in order does not matter
    assert clustering_accuracy(labels, pred) == pytest.approx(5 / 8)
    assert clustering_accuracy([0, 1, 1], [1, 0, 0]) == 1.0


def test_nmi_by_hand():
    pred = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 0, 0, 1])
    # P = [[.5, 0], [.25, .25]], rows (.5, .5), columns (.75, .25)
    mi = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(2.0)
    h_pred = math.log(2.0)
    h_labels = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = mi / (0.5 * (h_pred + h_labels))
    assert normalized_mutual_information(pred, labels) == pytest.approx(expected, rel=1e-12)
    assert normalized_mutual_information(labels, pred) == pytest.approx(expected, rel=1e-12)
    # independent labelings and trivial ones
    assert normalized_mutual_information([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert normalized_mutual_information([3, 3, 3], [1, 1, 1]) == 1.0
    assert normalized_mutual_information([3, 3, 3], [1, 2, 1]) == 0.0


def test_ari_by_hand():
    # n_ij = [[2,0,0],[0,1,1]]: index 1, rows 2, columns 1, E = 2/6
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(
        (1 - 1 / 3) / (1.5 - 1 / 3)
    )
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    assert adjusted_rand_index([0, 1, 2], [0, 1, 2]) == 1.0


def test_independent_labels_ari_near_zero():
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 5, (5000,), generator=g)
    labels = torch.randint(0, 5, (5000,), generator=g)
    assert abs(adjusted_rand_index(pred, labels)) < 0.005
    assert normalized_mutual_information(pred, labels) < 0.005
    assert clustering_accuracy(pred, labels) < 0.25


def test_clustering_argument_errors():
    with pytest.raises(ValueError, match="labels"):
        clustering_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="pred"):
        adjusted_rand_index(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred"):
        normalized_mutual_information(torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]))
