r"""Fréchet distance between Gaussian fits of features, on a small MNIST classifier.

This is *not* the Fréchet Inception Distance (FID): the features come from
:class:`~pyro_manifold.nn.MNISTClassifier`, a small convolutional network trained here
on MNIST, not from Inception-v3. Numbers from
:func:`~pyro_manifold.metrics.mnist_frechet_distance` compare models with each other
within this package and are not comparable with FID values reported in papers.

The classifier's weights are cached in a file ``mnist_classifier.pt``, found in this
order:

1. ``<cache_dir>/mnist_classifier.pt`` when ``cache_dir`` is given (and nowhere else);
2. ``<root>/pyro_manifold/mnist_classifier.pt``, where ``root`` is the MNIST data root:
   the ``root`` argument, else the environment variable ``PYRO_MANIFOLD_DATA``;
3. ``<PYRO_MANIFOLD_CACHE>/mnist_classifier.pt``, the environment variable defaulting
   to ``~/.cache/pyro_manifold``.

Loading takes the first of these files that exists; saving writes to the first
location that can be written (a read-only data root falls through to 3).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from pyro_manifold._validation import (
    check_positive,
    check_positive_int,
    check_tensor,
    resolve_device,
)
from pyro_manifold.datasets import ToyData, load_mnist
from pyro_manifold.datasets.mnist import DATA_ENV_VAR, data_root
from pyro_manifold.errors import (
    ArgumentError,
    ArgumentTypeError,
    DataNotFoundError,
    RunDirectoryError,
)
from pyro_manifold.nn.mnist_classifier import MNISTClassifier

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "load_mnist_classifier",
    "mnist_frechet_distance",
    "save_mnist_classifier",
    "train_mnist_classifier",
]

CLASSIFIER_FILENAME = "mnist_classifier.pt"
TRAIN_COMMAND = "python -m pyro_manifold train-classifier"
_FORMAT_VERSION = 1


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians.

    .. math::

        d^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\Sigma_1
        + \operatorname{tr}\Sigma_2
        - 2 \operatorname{tr}\left(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\right)^{1/2}.

    Computed in float64. Both square roots come from symmetric eigendecompositions
    whose (round-off) negative eigenvalues are set to zero, so the result is stable
    for singular covariances; it is clipped at zero.

    Args:
        mu1: mean of the first Gaussian, shape :math:`(D,)`.
        cov1: its covariance, shape :math:`(D, D)`, symmetric positive semi-definite.
        mu2: mean of the second Gaussian, shape :math:`(D,)`.
        cov2: its covariance, shape :math:`(D, D)`.

    Returns:
        :math:`d^2` as a Python float.

    Example:
        >>> # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2 = 1 + 1
        >>> frechet_distance(torch.zeros(1), torch.eye(1), torch.ones(1), 4 * torch.eye(1))
        2.0
    """
    check_tensor("mu1", mu1, min_dim=1)
    dim = mu1.shape[-1]
    if mu1.dim() != 1:
        raise ArgumentError(f"mu1: expected shape (D,), got {tuple(mu1.shape)}")
    check_tensor("cov1", cov1, event_shape=(dim, dim))
    check_tensor("mu2", mu2, event_shape=(dim,))
    check_tensor("cov2", cov2, event_shape=(dim, dim))
    for name, t in (("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if t.dim() != mu1.dim() + (name != "mu2"):
            raise ArgumentError(f"{name}: expected no batch dimensions, got {tuple(t.shape)}")
    mu1 = mu1.to(torch.float64)
    mu2, cov1, cov2 = (t.to(device=mu1.device, dtype=torch.float64) for t in (mu2, cov1, cov2))
    cov1 = 0.5 * (cov1 + cov1.T)
    cov2 = 0.5 * (cov2 + cov2.T)
    eigvals, eigvecs = torch.linalg.eigh(cov1)
    sqrt_cov1 = (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1
    trace_sqrt = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean and unbiased covariance of features, in float64.

    .. math::

        \mu = \frac1N \sum_n h_n, \qquad
        \Sigma = \frac{1}{N-1} \sum_n (h_n - \mu)(h_n - \mu)^\top.

    Args:
        features: shape :math:`(N, F)` with :math:`N \ge 2`.

    Returns:
        ``(mu, cov)`` of shapes :math:`(F,)` and :math:`(F, F)`.

    Example:
        >>> mu, cov = feature_statistics(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> mu, cov
        (tensor([1., 1.], dtype=torch.float64), tensor([[2., 0.],
                [0., 0.]], dtype=torch.float64))
    """
    check_tensor("features", features, min_dim=2)
    if features.dim() != 2 or features.shape[0] < 2:
        raise ArgumentError(
            f"features: expected shape (N, F) with N >= 2, got {tuple(features.shape)}"
        )
    h = features.detach().to(torch.float64)
    mu = h.mean(0)
    centred = h - mu
    return mu, centred.T @ centred / (h.shape[0] - 1)


def _classifier_features(classifier: MNISTClassifier, x: Tensor, batch_size: int) -> Tensor:
    device = next(classifier.parameters()).device
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device=device, dtype=torch.float32)
        out.append(classifier.features(batch.clamp(0.0, 1.0)).to(torch.float64))
    return torch.cat(out)


def mnist_frechet_distance(
    samples: Tensor, reference: Tensor, classifier: MNISTClassifier, batch_size: int = 500
) -> float:
    r"""Fréchet distance between MNIST-like images in a small classifier's feature space.

    **This is not FID.** It is the Fréchet distance (:func:`frechet_distance`) between
    Gaussian fits (:func:`feature_statistics`) of the penultimate-layer features of
    :class:`~pyro_manifold.nn.MNISTClassifier`, a small CNN trained on MNIST
    (see :func:`load_mnist_classifier`), not of Inception-v3 features. Its numbers rank
    models evaluated with the same classifier weights and are not comparable with FID
    values reported in papers.

    Images are clamped to :math:`[0, 1]` and fed through the classifier in evaluation
    mode, ``batch_size`` at a time, without gradients. Use a few thousand images on each
    side: with fewer than the feature dimension (128) the covariances are singular and
    the estimate is biased upward.

    Args:
        samples: model samples, shape :math:`(N, 784)`, values in :math:`[0, 1]`.
        reference: real images (e.g. the test split), shape :math:`(M, 784)`.
        classifier: the feature extractor.
        batch_size: images per forward pass.

    Returns:
        The squared Fréchet distance as a Python float.

    Example:
        >>> net = MNISTClassifier()  # untrained here; use load_mnist_classifier()
        >>> images = torch.rand(64, 784)
        >>> round(mnist_frechet_distance(images, images, net), 6)
        0.0
    """
    check_tensor("samples", samples, event_shape=(784,))
    check_tensor("reference", reference, event_shape=(784,))
    if not isinstance(classifier, MNISTClassifier):
        raise ArgumentTypeError(
            f"classifier: expected an MNISTClassifier, got {type(classifier).__name__}"
        )
    check_positive_int("batch_size", batch_size)
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            stats_samples = feature_statistics(
                _classifier_features(classifier, samples.reshape(-1, 784), batch_size)
            )
            stats_reference = feature_statistics(
                _classifier_features(classifier, reference.reshape(-1, 784), batch_size)
            )
    finally:
        classifier.train(was_training)
    return frechet_distance(*stats_samples, *stats_reference)


# ----------------------------------------------------------------------------------------
# training and caching


def _data_root(root: str | os.PathLike[str] | None) -> Path | None:
    """The MNIST data root: the argument, else ``$PYRO_MANIFOLD_DATA``, else ``None``."""
    if root is None and not os.environ.get(DATA_ENV_VAR):
        return None
    return data_root(root, must_exist=False)


def _default_cache_dir() -> Path:
    env = os.environ.get("PYRO_MANIFOLD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_manifold"


def _cache_paths(
    root: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None
) -> list[Path]:
    """Candidate weight files, in the documented resolution order."""
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / CLASSIFIER_FILENAME]
    paths = []
    folder = _data_root(root)
    if folder is not None:
        paths.append(folder / "pyro_manifold" / CLASSIFIER_FILENAME)
    paths.append(_default_cache_dir() / CLASSIFIER_FILENAME)
    return paths


def _unit_images(data: ToyData) -> tuple[Tensor, Tensor]:
    """Images as float32 ``(N, 784)`` in [0, 1] and their labels ``(N,)``."""
    return data.data.to(torch.float32) / 255.0, data.labels


def _shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each 28 x 28 image by up to ``max_shift`` pixels (zero fill)."""
    n = images.shape[0]
    padded = F.pad(images.reshape(n, 28, 28), (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(28))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(28))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].reshape(n, 784)


def _accuracy(classifier: MNISTClassifier, images: Tensor, labels: Tensor, device) -> float:
    classifier.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], 1000):
            logits = classifier(images[start : start + 1000].to(device))
            correct += int((logits.argmax(-1).cpu() == labels[start : start + 1000]).sum())
    return correct / images.shape[0]


def train_mnist_classifier(
    root: str | os.PathLike[str] | None = None,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    augment: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> MNISTClassifier:
    r"""Train :class:`~pyro_manifold.nn.MNISTClassifier` on MNIST's training split.

    Cross-entropy with AdamW and a cosine learning-rate decay to zero, batch size
    ``batch_size``, for ``epochs`` passes; ``augment`` shifts each training image by up
    to two pixels. The accuracy on the 10,000 test images is measured at the end and
    stored in ``classifier.test_accuracy`` (the defaults reach about 99%). Nothing is
    downloaded: the files are read by :func:`~pyro_manifold.datasets.load_mnist`
    (``"train+validation"`` and ``"test"``). The global random state is left untouched.

    Args:
        root: the data root holding ``MNIST/raw``; ``None`` reads ``$PYRO_MANIFOLD_DATA``.
        epochs: passes over the 60,000 training images.
        batch_size: images per step.
        lr: peak learning rate.
        augment: randomly translate training images by up to two pixels.
        seed: seed of the initialisation, shuffling, dropout and augmentation.
        device: where to train; ``None`` picks CUDA when available.
        progress: show a tqdm bar (only on a terminal).

    Returns:
        The trained classifier, in evaluation mode, on ``device``.

    Raises:
        FileNotFoundError: no data root is given (see
            :func:`~pyro_manifold.datasets.data_root`) or the MNIST files are missing.
        ArgumentError: ``device`` cannot hold the network (``"meta"``, an absent CUDA
            device, an unknown name), refused before anything is read or trained.

    Example:
        >>> import os
        >>> if os.environ.get("PYRO_MANIFOLD_DOCTEST_TRAIN"):  # minutes on a CPU
        ...     net = train_mnist_classifier(epochs=3)
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_positive_int("seed", seed, minimum=0)
    folder = data_root(root)
    device = resolve_device(device)
    (train_x, train_y), (test_x, test_y) = (
        _unit_images(load_mnist(folder, split)) for split in ("train+validation", "test")
    )

    generator = torch.Generator().manual_seed(seed)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        classifier = MNISTClassifier().to(device)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-train_x.shape[0] // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
        )
        bar = tqdm(
            total=epochs * steps_per_epoch,
            desc="MNIST classifier",
            disable=None if progress else True,
        )
        try:
            for epoch in range(epochs):
                classifier.train()
                order = torch.randperm(train_x.shape[0], generator=generator)
                for start in range(0, train_x.shape[0], batch_size):
                    idx = order[start : start + batch_size]
                    images = train_x[idx]
                    if augment:
                        images = _shift(images, 2, generator)
                    loss = F.cross_entropy(classifier(images.to(device)), train_y[idx].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", refresh=False)
        finally:
            bar.close()
    classifier.test_accuracy = _accuracy(classifier, test_x, test_y, device)
    return classifier.eval()


def save_mnist_classifier(
    classifier: MNISTClassifier,
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    r"""Save a classifier's weights and test accuracy to the cache, atomically.

    The file is written to a temporary file in the target folder and moved into place
    with ``os.replace``, so a reader never sees a half-written file. The target is the
    first writable location in the order of this module's docstring.

    Args:
        classifier: the network to save.
        root: the MNIST data root; ``None`` reads ``$PYRO_MANIFOLD_DATA``.
        cache_dir: a folder to use instead of the default locations.

    Returns:
        The path written.

    Raises:
        OSError: no candidate location can be written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_mnist_classifier(MNISTClassifier(), cache_dir=folder).name
        'mnist_classifier.pt'
    """
    if not isinstance(classifier, MNISTClassifier):
        raise ArgumentTypeError(
            f"classifier: expected an MNISTClassifier, got {type(classifier).__name__}"
        )
    payload = {
        "format_version": _FORMAT_VERSION,
        "num_features": classifier.num_features,
        "num_classes": classifier.num_classes,
        "test_accuracy": classifier.test_accuracy,
        "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
    }
    errors = []
    for path in _cache_paths(root, cache_dir):
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".mnist_classifier.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the cache is meant to be shared
            os.replace(tmp_name, path)
            return path
        except OSError as err:
            errors.append(f"{path}: {err}")
            if tmp_name is not None and os.path.exists(tmp_name):
                os.unlink(tmp_name)
    raise RunDirectoryError(
        "classifier cache: expected a writable place, could not save the MNIST classifier to "
        "any of: " + "; ".join(errors)
    )


def load_mnist_classifier(
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    train_if_missing: bool = False,
    device: str | torch.device | None = None,
) -> MNISTClassifier:
    r"""Load the cached MNIST classifier, training and caching it first if asked.

    Looks for ``mnist_classifier.pt`` in the order of this module's docstring and loads
    it with ``torch.load(weights_only=True)``. When none exists it either raises or,
    with ``train_if_missing=True``, runs :func:`train_mnist_classifier` (minutes on a
    CPU) and saves the result with :func:`save_mnist_classifier`.

    Args:
        root: the MNIST data root; ``None`` reads ``$PYRO_MANIFOLD_DATA``.
        cache_dir: a folder to use instead of the default locations.
        train_if_missing: train and cache the classifier when no weights are found.
        device: where to put the network (default CPU).

    Returns:
        The classifier in evaluation mode, with ``test_accuracy`` set.

    Raises:
        FileNotFoundError: no cached weights and ``train_if_missing`` is false; the
            message names the command that trains them.
        ArgumentError: ``device`` cannot hold the network, refused before anything is
            loaded, trained or written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = save_mnist_classifier(MNISTClassifier(), cache_dir=folder)
        ...     load_mnist_classifier(cache_dir=folder).num_features
        128
    """
    device = resolve_device("cpu" if device is None else device)  # refused before any work
    candidates = _cache_paths(root, cache_dir)
    for path in candidates:
        if path.is_file():
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format_version") != _FORMAT_VERSION:
                raise ArgumentError(
                    f"{path}: expected an MNIST classifier file of format version "
                    f"{_FORMAT_VERSION}; delete it and run `{TRAIN_COMMAND}`"
                )
            classifier = MNISTClassifier(payload["num_features"], payload["num_classes"])
            classifier.load_state_dict(payload["state_dict"])
            classifier.test_accuracy = payload["test_accuracy"]
            return classifier.to(device).eval()
    if not train_if_missing:
        searched = ", ".join(str(p) for p in candidates)
        raise DataNotFoundError(
            f"No trained MNIST classifier found (looked for {searched}). Train and cache "
            f"it once with `{TRAIN_COMMAND}` (set PYRO_MANIFOLD_DATA to the folder holding "
            "MNIST/raw), or call load_mnist_classifier(..., train_if_missing=True)."
        )
    classifier = train_mnist_classifier(root, device=device)
    save_mnist_classifier(classifier, root, cache_dir=cache_dir)
    return classifier
