import pytest
import torch

import pyro_manifold.metrics.frechet as frechet
from pyro_manifold.metrics import (
    feature_statistics,
    frechet_distance,
    load_mnist_classifier,
    mnist_frechet_distance,
    save_mnist_classifier,
    train_mnist_classifier,
)
from pyro_manifold.nn import MNISTClassifier


def _random_spd(dim, generator):
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_identical_statistics_give_zero():
    g = torch.Generator().manual_seed(0)
    mu, cov = torch.randn(6, generator=g), _random_spd(6, g)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # singular covariance (rank 2 of 6): still zero, no NaN
    low = torch.randn(6, 2, generator=g, dtype=torch.float64)
    assert frechet_distance(mu, low @ low.T, mu, low @ low.T) == pytest.approx(0.0, abs=1e-6)


def test_closed_form_one_dimensional_and_diagonal():
    mu1, s1, mu2, s2 = 0.3, 1.7, -1.2, 0.4
    expected = (mu1 - mu2) ** 2 + s1**2 + s2**2 - 2 * s1 * s2
    out = frechet_distance(
        torch.tensor([mu1]), torch.tensor([[s1**2]]), torch.tensor([mu2]), torch.tensor([[s2**2]])
    )
    assert out == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    sd1, sd2 = torch.rand(5, generator=g) + 0.1, torch.rand(5, generator=g) + 0.1
    expected = ((m1 - m2) ** 2 + (sd1 - sd2) ** 2).sum().item()
    out = frechet_distance(m1, torch.diag(sd1**2), m2, torch.diag(sd2**2))
    assert out == pytest.approx(expected, rel=1e-5)


def test_symmetric_and_matches_commuting_case():
    g = torch.Generator().manual_seed(2)
    mu1 = torch.randn(4, generator=g, dtype=torch.float64)
    mu2 = torch.randn(4, generator=g, dtype=torch.float64)
    cov1, cov2 = _random_spd(4, g), _random_spd(4, g)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
        frechet_distance(mu2, cov2, mu1, cov1), rel=1e-9
    )
    # cov2 = cov1^2 commutes with cov1: tr sqrt(cov1 cov2 cov1)^(1/2) = tr cov1^(3/2)
    eig = torch.linalg.eigvalsh(cov1)
    cov2 = cov1 @ cov1
    expected = (mu1 - mu2).square().sum() + eig.sum() + (eig**2).sum()
    expected -= 2 * eig.pow(1.5).sum()
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected.item(), rel=1e-9)


def test_frechet_argument_checks():
    with pytest.raises(ValueError, match="cov1"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="features"):
        feature_statistics(torch.zeros(1, 3))


def test_feature_statistics_matches_torch_cov():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(50, 4, generator=g)
    mu, cov = feature_statistics(h)
    torch.testing.assert_close(mu, h.double().mean(0))
    torch.testing.assert_close(cov, torch.cov(h.double().T))


def test_mnist_frechet_distance_orders_distributions():
    torch.manual_seed(0)
    net = MNISTClassifier().eval()
    reference = torch.rand(150, 784) * 0.5
    same = torch.rand(150, 784) * 0.5
    different = torch.rand(150, 784) * 0.5 + 0.5
    near = mnist_frechet_distance(same, reference, net, batch_size=64)
    far = mnist_frechet_distance(different, reference, net, batch_size=64)
    assert 0 <= near < far
    net.train()
    mnist_frechet_distance(same[:10], reference[:10], net)
    assert net.training  # the mode is restored
    with pytest.raises(TypeError, match="classifier"):
        mnist_frechet_distance(same, reference, torch.nn.Linear(784, 10))


def test_classifier_shapes():
    net = MNISTClassifier(num_features=32)
    assert net.features(torch.rand(2, 3, 784)).shape == (2, 3, 32)
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    with pytest.raises(ValueError, match="x"):
        net(torch.rand(4, 100))


# --- training and the weight cache, on a tiny synthetic MNIST -----------------------------


@pytest.fixture
def fake_root(tmp_path, monkeypatch, fake_mnist):
    root = fake_mnist(tmp_path / "data")
    monkeypatch.setenv("PYRO_MANIFOLD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYRO_MANIFOLD_DATA", raising=False)
    return root


def test_train_runs_on_tiny_data(fake_root):
    state = torch.random.get_rng_state()
    net = train_mnist_classifier(fake_root, epochs=1, batch_size=32, progress=False, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert not net.training
    assert 0.0 <= net.test_accuracy <= 1.0


def test_cache_round_trip_and_atomic_save(fake_root, monkeypatch):
    with pytest.raises(FileNotFoundError, match="python -m pyro_manifold train-classifier"):
        load_mnist_classifier(fake_root)

    real_train = frechet.train_mnist_classifier

    def quick_train(root, **kwargs):
        return real_train(root, epochs=1, batch_size=64, progress=False, device="cpu")

    monkeypatch.setattr(frechet, "train_mnist_classifier", quick_train)
    net = load_mnist_classifier(fake_root, train_if_missing=True)
    folder = fake_root / "pyro_manifold"
    assert sorted(p.name for p in folder.iterdir()) == ["mnist_classifier.pt"]  # no temp files

    def no_training(*args, **kwargs):
        raise AssertionError("should load from the cache")

    monkeypatch.setattr(frechet, "train_mnist_classifier", no_training)
    again = load_mnist_classifier(fake_root)
    assert again.test_accuracy == net.test_accuracy
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(3, 784)
    torch.testing.assert_close(net(x), again(x))
    # the environment variable stands in for the root argument
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(fake_root))
    assert load_mnist_classifier().test_accuracy == net.test_accuracy


@pytest.mark.parametrize("device", ["meta", "nope", "cuda:7"])
def test_a_bad_device_is_refused_before_any_training_or_file(fake_root, tmp_path, device):
    """Loading (training if missing) and training refuse a device that cannot hold the
    network, naming ``device``, before training or writing anything."""
    from pyro_manifold.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"^device: expected"):
        load_mnist_classifier(fake_root, train_if_missing=True, device=device)
    with pytest.raises(ArgumentError, match=r"^device: expected"):
        train_mnist_classifier(fake_root, epochs=1, progress=False, device=device)
    assert not (fake_root / "pyro_manifold").exists() and not (tmp_path / "cache").exists()


def test_unwritable_root_falls_back_to_cache_dir(fake_root, tmp_path):
    (fake_root / "pyro_manifold").write_text("a file where the cache folder should be")
    path = save_mnist_classifier(MNISTClassifier(), fake_root)
    assert path == tmp_path / "cache" / "mnist_classifier.pt"
    assert load_mnist_classifier(fake_root).test_accuracy is None
    explicit = save_mnist_classifier(MNISTClassifier(), cache_dir=tmp_path / "elsewhere")
    assert explicit.is_file()
    assert load_mnist_classifier(cache_dir=tmp_path / "elsewhere").num_features == 128


def test_missing_files_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST"):
        train_mnist_classifier(tmp_path, epochs=1, progress=False)
