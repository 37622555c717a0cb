import pathlib

import pytest
import torch

from pyro_manifold.datasets import (
    data_root,
    dequantize,
    dequantize_logit,
    dynamic_binarize,
    inverse_logit_transform,
    load_dataset,
    load_mnist,
    logit_transform,
    static_binarize,
)

F64 = torch.float64


def _row_keys(x):
    # a random integer key per image: every partial sum stays below 2**52, so the float64
    # sum is exact whatever the summation order (collisions have negligible probability)
    g = torch.Generator().manual_seed(0)
    weights = torch.randint(0, 2**34, (784,), generator=g).to(F64)
    return torch.sort(x.to(F64) @ weights).values


# ---------------------------------------------------------------- data on disk


@pytest.mark.mnist
def test_splits_shapes_and_dtypes(mnist_root):
    sizes = {"train": 50000, "validation": 10000, "test": 10000, "train+validation": 60000}
    for split, size in sizes.items():
        x, y = load_mnist(split=split)
        assert x.shape == (size, 784) and x.dtype == torch.uint8
        assert y.shape == (size,) and y.dtype == torch.int64
        assert y.min() == 0 and y.max() == 9
        assert x.max() == 255 and x.min() == 0
    first = load_mnist(split="train+validation").labels[:10].tolist()
    assert first == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official order


@pytest.mark.mnist
def test_train_and_validation_partition_the_training_set(mnist_root):
    train, val = load_mnist(split="train"), load_mnist(split="validation")
    full = load_mnist(split="train+validation")
    both = torch.cat([train.data, val.data])
    assert torch.equal(_row_keys(both), _row_keys(full.data))
    assert torch.equal(
        torch.bincount(torch.cat([train.labels, val.labels])), torch.bincount(full.labels)
    )
    # disjoint as index sets: same seed, same split; another seed, another split
    again = load_mnist(split="validation", seed=0)
    other = load_mnist(split="validation", seed=1)
    assert torch.equal(again.data, val.data) and not torch.equal(other.data, val.data)
    small = load_mnist(split="validation", validation_size=100)
    assert small.data.shape == (100, 784)
    assert load_mnist(split="train", validation_size=0).data.shape == (60000, 784)


@pytest.mark.mnist
def test_digits_filter(mnist_root):
    x, y = load_mnist(split="test", digits=[7, 3])
    full = load_mnist(split="test")
    assert set(y.tolist()) == {3, 7}
    assert len(y) == int(((full.labels == 3) | (full.labels == 7)).sum())
    assert torch.equal(x, full.data[(full.labels == 3) | (full.labels == 7)])
    assert load_mnist(split="test", digits=torch.tensor([0])).labels.unique().tolist() == [0]


@pytest.mark.mnist
def test_root_argument_and_preprocessing_pipeline(mnist_root, monkeypatch):
    monkeypatch.delenv("PYRO_MANIFOLD_DATA")
    x, _ = load_mnist(mnist_root, split="test")
    x = x[:64]
    y = dequantize(x, torch.Generator().manual_seed(0))
    z, logdet = logit_transform(y)
    assert torch.isfinite(z).all() and logdet.shape == (64,) and torch.isfinite(logdet).all()
    assert set(static_binarize(x).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.mnist
def test_mnist_through_registry(mnist_root):
    x, y = load_dataset("mnist", 500, split="test")
    assert x.shape == (500, 784) and x.dtype == torch.uint8 and y.shape == (500,)
    assert torch.equal(x, load_mnist(split="test").data[:500])
    assert load_dataset("mnist", split="validation").data.shape == (10000, 784)
    with pytest.raises(ValueError, match="^num_samples"):
        load_dataset("mnist", 20000, split="test")


# ---------------------------------------------------------------- no data needed


def test_unknown_root_raises_file_not_found(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_mnist(missing)
    # an existing folder without the files names the expected raw folder
    with pytest.raises(FileNotFoundError, match="MNIST/raw") as info:
        load_mnist(tmp_path, split="test")
    assert str(tmp_path) in str(info.value) and "download=True" in str(info.value)


@pytest.mark.parametrize(
    "where, reason",
    [(None, "PYRO_MANIFOLD_DATA is not set"), ("empty", "lacks the MNIST files train-images")],
)
def test_mnist_tests_are_skipped_with_the_reason_without_the_data(
    request, tmp_path, monkeypatch, where, reason
):
    """README: "Tests that need MNIST read it from ``$PYRO_MANIFOLD_DATA`` ... and are
    skipped, with the reason, when it is not set": the ``mnist_root`` fixture skips, naming
    the variable, or the files missing under the folder it names."""
    if where is None:
        monkeypatch.delenv("PYRO_MANIFOLD_DATA", raising=False)
    else:
        monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=reason):
        request.getfixturevalue("mnist_root")


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_MANIFOLD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="PYRO_MANIFOLD_DATA") as info:
        data_root()
    assert "root=" in str(info.value) and "download=True" in str(info.value)
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", "")
    with pytest.raises(FileNotFoundError, match="unset"):
        load_mnist()
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root(tmp_path / "x", must_exist=False) == tmp_path / "x"
    monkeypatch.setenv("PYRO_MANIFOLD_DATA", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="environment variable PYRO_MANIFOLD_DATA"):
        data_root()
    with pytest.raises(TypeError, match="root"):
        data_root(3)


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        ({"split": "valid"}, "split", ValueError),
        ({"digits": []}, "digits", ValueError),
        ({"digits": [10]}, "digits", ValueError),
        ({"digits": [1.0]}, "digits", ValueError),
        ({"digits": "12"}, "digits", TypeError),
        ({"validation_size": 60000}, "validation_size", ValueError),
        ({"validation_size": -1}, "validation_size", ValueError),
        ({"split": "validation", "validation_size": 0}, "validation_size", ValueError),
        ({"seed": -2}, "seed", ValueError),
        ({"download": "yes"}, "download", TypeError),
    ],
)
def test_load_mnist_bad_arguments(kwargs, name, error, tmp_path):
    # checked before the data folder is looked at
    with pytest.raises(error, match=f"^{name}"):
        load_mnist(tmp_path / "nowhere", **kwargs)


def test_binarization():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 784), generator=g, dtype=torch.uint8)
    b = dynamic_binarize(x, torch.Generator().manual_seed(1))
    assert b.dtype == torch.float32 and b.shape == x.shape
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert abs(b.mean().item() - (x.float() / 255).mean().item()) < 0.01
    assert torch.equal(b, dynamic_binarize(x, torch.Generator().manual_seed(1)))
    assert (b[x == 0] == 0).all() and (b[x == 255] == 1).all()
    p = torch.rand(50, 10, generator=g, dtype=F64)
    assert dynamic_binarize(p, g).dtype == F64
    s = static_binarize(x, seed=3)
    assert set(s.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s, static_binarize(x, seed=3)) and not torch.equal(s, static_binarize(x))
    with pytest.raises(ValueError, match="^x"):
        dynamic_binarize(torch.tensor([0.5, 1.5]))
    with pytest.raises(TypeError, match="^x"):
        dynamic_binarize(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="^generator"):
        dynamic_binarize(p, generator=0)
    with pytest.raises(ValueError, match="^seed"):
        static_binarize(x, seed=-1)


def test_dequantize():
    x = torch.arange(256, dtype=torch.uint8).repeat(200)
    y = dequantize(x, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y > 0).all() and (y < 1).all()
    assert torch.equal(torch.floor(y.double() * 256).long(), x.long())
    assert torch.equal(y, dequantize(x, torch.Generator().manual_seed(0)))
    # the noise is uniform within each bin
    frac = y.double() * 256 - x.double()
    assert abs(frac.mean().item() - 0.5) < 0.01 and abs(frac.var().item() - 1 / 12) < 0.005
    # the top bin never rounds up to 1.0, also in float32
    top = dequantize(torch.full((100_000,), 255, dtype=torch.uint8))
    assert (top < 1).all()
    assert dequantize(x, dtype=F64).dtype == F64
    assert dequantize(torch.tensor([3, 200])).shape == (2,)
    with pytest.raises(TypeError, match="^x"):
        dequantize(torch.rand(3))
    with pytest.raises(ValueError, match="^x"):
        dequantize(torch.tensor([0, 256]))
    with pytest.raises(TypeError, match="^dtype"):
        dequantize(x, dtype=torch.int32)


def test_dequantize_logit_seeding_rule():
    x = torch.randint(0, 256, (30, 5), dtype=torch.uint8)
    y, logdet = dequantize_logit(x, 3, alpha=1e-3, dtype=F64)
    # dequantize with a CPU generator seeded with seed, then the logit transform
    want = logit_transform(dequantize(x, torch.Generator().manual_seed(3), dtype=F64), 1e-3)
    torch.testing.assert_close((y, logdet), want, atol=0, rtol=0)
    assert y.dtype == F64 and logdet.shape == (30,)
    # one call on the whole set draws as the same generator chained over its batches
    g = torch.Generator().manual_seed(3)
    chained = [logit_transform(dequantize(c, g, dtype=F64), 1e-3)[0] for c in x.split(7)]
    assert torch.equal(y, torch.cat(chained))
    # None: the global random state
    torch.manual_seed(1)
    fresh = dequantize_logit(x)[0]
    torch.manual_seed(1)
    assert torch.equal(fresh, dequantize_logit(x)[0])
    assert not torch.equal(fresh, dequantize_logit(x)[0])
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        dequantize_logit(x, -1)
    with pytest.raises(ValueError, match="alpha"):
        dequantize_logit(x, 0, alpha=0.5)


def test_logit_transform_logdet_against_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g, dtype=F64)
    x[0, 0], x[1, 1] = 0.0, 1.0  # the ends are fine with alpha > 0
    for alpha in (1e-6, 0.05):
        y, logdet = logit_transform(x, alpha=alpha)
        assert y.shape == x.shape and logdet.shape == (4,)
        jac = torch.autograd.functional.jacobian(lambda t, a=alpha: logit_transform(t, a)[0], x)
        diag = torch.stack([torch.diagonal(jac[i, :, i, :]) for i in range(4)])  # (4, 6)
        on_diagonal = torch.eye(24, dtype=torch.bool).reshape(4, 6, 4, 6)
        assert (jac[~on_diagonal] == 0).all()
        assert torch.allclose(logdet, diag.abs().log().sum(-1))
        assert torch.allclose(inverse_logit_transform(y, alpha=alpha), x, atol=1e-12)
    # log p_x(x) = log p_y(y) + logdet: a standard logistic y has uniform x when alpha = 0
    x = torch.rand(5, 3, generator=g, dtype=F64)
    y, logdet = logit_transform(x, alpha=0.0)
    log_py = -(y + 2 * torch.nn.functional.softplus(-y))  # logistic log-density
    assert torch.allclose(log_py.sum(-1) + logdet, torch.zeros(5, dtype=F64), atol=1e-12)
    assert logit_transform(torch.rand(7))[1].shape == ()


def test_logit_transform_precision_near_one():
    x = torch.tensor([1.0 - 2**-20, 2**-20], dtype=torch.float32)
    y, _ = logit_transform(x, alpha=0.0)
    assert torch.allclose(y, torch.tensor([20 * 0.6931472, -20 * 0.6931472]), rtol=1e-5)


def test_logit_transform_bad_arguments():
    with pytest.raises(ValueError, match="^x"):
        logit_transform(torch.tensor([[0.5, 1.2]]))
    with pytest.raises(TypeError, match="^x"):
        logit_transform(torch.tensor([[1, 2]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="^alpha"):
        logit_transform(torch.rand(2, 3), alpha=0.5)
    with pytest.raises(ValueError, match="^alpha"):
        inverse_logit_transform(torch.rand(2, 3), alpha=-1e-6)
    with pytest.raises(TypeError, match="^y"):
        inverse_logit_transform([0.0])


def _idx(magic: int, shape: tuple[int, ...], payload: int | None = None) -> bytes:
    """An IDX file: magic number, the dimensions, then ``payload`` bytes (default: all)."""
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    size = int(torch.tensor(shape).prod()) if payload is None else payload
    return head + bytes(i % 10 for i in range(size))


def _fake_test_split(root: pathlib.Path, images: bytes, labels: bytes) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(images)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels)


IMAGES, LABELS = _idx(2051, (10000, 28, 28)), _idx(2049, (10000,))


@pytest.mark.parametrize(
    "images, labels, file, match",
    [
        (IMAGES[: len(IMAGES) // 2], LABELS, "images",
         r"expected 7840016 bytes for its header's shape \(10000, 28, 28\), got 3920008 bytes "
         r"\(truncated\)"),
        (IMAGES, _idx(2049, (9999,)), "labels",
         r"expected a header of shape \(10000,\), got \(9999,\)"),
        (IMAGES, LABELS[:-1], "labels", r"expected 10008 bytes .*got 10007 bytes \(truncated\)"),
        (b"hello\n", LABELS, "images", r"expected an IDX file with a 16-byte header, got a file "
         r"of 6 bytes"),
        (_idx(2049, (10000, 28, 28)), LABELS, "images",
         r"expected the IDX magic number 2051 .*got 2049"),
        (IMAGES, _idx(2049, (10000,))[:-1] + bytes([12]), "labels",
         r"expected digit labels in 0\.\.9, got 12 at item 9999"),
    ],
)  # fmt: skip
def test_a_damaged_mnist_file_is_named_not_reported_missing(tmp_path, images, labels, file, match):
    from pyro_manifold.errors import DataFormatError

    _fake_test_split(tmp_path, images, labels)
    with pytest.raises(DataFormatError, match=match) as info:
        load_mnist(tmp_path, split="test")
    assert f"t10k-{file}-idx" in str(info.value) and "not found" not in str(info.value)


def test_well_formed_mnist_files_load(tmp_path):
    _fake_test_split(tmp_path, IMAGES, LABELS)
    data = load_mnist(tmp_path, split="test")
    assert data.data.shape == (10000, 784) and data.data.dtype == torch.uint8
    assert data.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.data[0, :3].tolist() == [0, 1, 2]


def test_a_missing_labels_file_is_reported_missing_by_name(tmp_path):
    _fake_test_split(tmp_path, IMAGES, LABELS)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"MNIST not found .*t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, split="test")


def test_a_small_training_file_is_refused_for_the_train_split(tmp_path):
    from pyro_manifold.errors import DataFormatError

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(_idx(2051, (20, 28, 28)))
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx(2049, (20,)))
    assert load_mnist(tmp_path, split="train+validation").data.shape == (20, 784)
    with pytest.raises(DataFormatError, match=r"expected 60000 images .*got 20"):
        load_mnist(tmp_path, split="train")
