"""Argument checks shared by the whole package.

Every public entry point checks its inputs with these helpers before it changes any
state, so that an error always names the argument, what was expected and what was
given: :class:`~pyro_manifold.errors.ArgumentError` (a ``ValueError``) for a wrong value,
shape, dtype or device, :class:`~pyro_manifold.errors.ArgumentTypeError` (a ``TypeError``)
for a wrong type (including an integer tensor where a floating one is needed).

What is checked where (the cost stays off the hot paths):

* Metadata (type, shape, dtype and device against the module's own tensors) is checked
  at every entry point, transforms and networks included: it costs no device
  synchronisation.
* Values (finite entries, supports, ranges) are checked by :func:`check_input` only while
  Pyro's validation is enabled (:func:`pyro.enable_validation`, on by default), like
  the distributions' own ``validate_args``; ``pyro.enable_validation(False)`` removes
  these synchronising checks from training loops. The networks of
  :mod:`pyro_manifold.nn` (PICNN, batched MLPs) never check values: they run inside
  transforms and in inner loops such as PCP-Map's Newton line search, which tries
  non-finite points on purpose.
* Empty batches are rejected where an empty data set makes no sense (models' data,
  the NIF's stochastic inverse, the quantizer); transforms, networks and ``log_prob``
  accept them and return empty results, as torch does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro.distributions.util import is_validation_enabled
from torch import Tensor, nn

from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "check_bool",
    "check_bounds",
    "check_broadcast",
    "check_choice",
    "check_data_rows",
    "check_finite",
    "check_finite_rows",
    "check_input",
    "check_matches",
    "check_per_point",
    "check_positive",
    "check_positive_int",
    "check_probability",
    "check_tensor",
    "check_widths",
    "is_binary",
    "reference_tensor",
    "resolve_device",
]


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}"


def check_tensor(
    name: str,
    x: object,
    *,
    event_shape: tuple[int, ...] | None = None,
    min_dim: int | None = None,
    floating: bool = True,
    finite: bool = True,
    nonempty: bool = True,
    device: torch.device | None = None,
) -> Tensor:
    r"""Check that ``x`` is a tensor fit to be passed as argument ``name``.

    Args:
        name: the argument's name, used in the error message.
        x: the value given.
        event_shape: required trailing shape, e.g. ``(D,)``; ``None`` skips the check.
        min_dim: smallest number of dimensions; defaults to ``len(event_shape)``.
        floating: require a floating-point dtype.
        finite: require every entry to be finite.
        nonempty: require at least one element.
        device: required device (compared by type and index).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor or has the wrong dtype.
        ValueError: wrong shape, device, an empty batch or non-finite values.

    Example:
        >>> check_tensor("x", torch.zeros(3, 2), event_shape=(2,)).shape
        torch.Size([3, 2])
    """
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"{name}: expected a torch.Tensor, got {_describe(x)}")
    if floating and not x.is_floating_point():
        raise ArgumentTypeError(f"{name}: expected a floating-point tensor, got {_describe(x)}")
    if event_shape is not None:
        k = len(event_shape)
        need = k if min_dim is None else min_dim
        if x.dim() < need or tuple(x.shape[x.dim() - k :]) != tuple(event_shape):
            raise ArgumentError(
                f"{name}: expected shape (*, {', '.join(map(str, event_shape))})"
                f" (at least {need} dims), got {_describe(x)}"
            )
    elif min_dim is not None and x.dim() < min_dim:
        raise ArgumentError(f"{name}: expected at least {min_dim} dims, got {_describe(x)}")
    if nonempty and x.numel() == 0:
        raise ArgumentError(f"{name}: expected a non-empty tensor, got {_describe(x)}")
    if device is not None:
        want = torch.device(device)
        if x.device.type != want.type or (want.index is not None and x.device.index != want.index):
            raise ArgumentError(f"{name}: expected a tensor on device {want}, got {_describe(x)}")
    if finite and x.is_floating_point():
        check_finite(name, x)
    return x


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or infinite values.

    One min/max reduction decides (NaN propagates into both, an infinity shows in one):
    no tensor of the input's size is allocated, so checking a whole data set costs a
    small fraction of one pass of training over it.

    Example:
        >>> check_finite("x", torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    if x.is_meta or x.numel() == 0:  # no values to check
        return x
    lo, hi = torch.aminmax(x.detach())
    ok = bool(torch.isfinite(lo) & torch.isfinite(hi))
    if not ok:
        bad = ~torch.isfinite(x)
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ArgumentError(
            f"{name}: expected finite values, got {int(bad.sum())} non-finite "
            f"entries (first at index {idx}: {x[idx].item()}) in a tensor of shape "
            f"{tuple(x.shape)}"
        )
    return x


def check_finite_rows(name: str, x: object, first_row: int = 0) -> None:
    """Raise naming the first row of ``x`` (rows first) that holds NaN or infinite values.

    For checks of a data set in chunks: row ``i`` of ``x`` is reported as row
    ``first_row + i``. Anything but a non-empty floating tensor passes (its type and
    shape are other checks' business). One min/max reduction decides, as in
    :func:`check_finite`.

    Example:
        >>> check_finite_rows("x", torch.tensor([[0.0, float("nan")]]), first_row=7)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: x: expected finite values in every row, got 1 rows ...
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.is_meta or x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):
        return
    rows = (~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(-1)).nonzero().flatten()
    row = int(rows[0])
    entry = x.detach().reshape(x.shape[0], -1)[row]
    value = entry[~torch.isfinite(entry)][0].item()
    raise ArgumentError(
        f"{name}: expected finite values in every row, got {len(rows)} rows with NaN or "
        f"infinite entries (first: row {first_row + row}, value {value}) in rows "
        f"{first_row}..{first_row + x.shape[0] - 1}"
    )


def is_binary(x: Tensor) -> bool:
    r"""Whether every entry of ``x`` is 0 or 1.

    For floating ``x``: :math:`0 \le \min x`, :math:`\max x \le 1` and no fractional
    part, decided by one min/max reduction and one pass of :func:`torch.frac` (NaN fails
    both, an infinity the first): no boolean temporaries, unlike comparing every entry
    with 0 and with 1. ``-0.0`` counts as 0, as ``-0.0 == 0`` does.

    Example:
        >>> is_binary(torch.tensor([0.0, 1.0, -0.0])), is_binary(torch.tensor([0.0, 0.5]))
        (True, False)
    """
    if x.numel() == 0:
        return True
    if not x.is_floating_point():
        return bool(((x == 0) | (x == 1)).all())
    lo, hi = torch.aminmax(x.detach())
    if not bool((lo >= 0) & (hi <= 1)):
        return False
    return not bool(torch.frac(x.detach()).any())


def check_data_rows(check_x: Callable[[Tensor], object], x: object, first_row: int = 0) -> None:
    """The body of a model's ``check_data``: ``check_x(x)`` with values, rows named.

    Runs the model's own check ``check_x`` with Pyro's validation on, so that its value
    checks run whatever the global setting; ``check_x`` must refuse non-finite values
    itself (as :func:`check_input` does under validation). When it refuses a tensor of
    rows (at least two dimensions), a non-finite entry is reported first, naming its row
    (as row ``first_row + i``); any other refusal is raised as ``check_x`` made it. The
    values are thus read once on the happy path (by ``check_x``), and again only to name
    a bad row. See :mod:`pyro_manifold.infer._data_check` for the protocol.

    Example:
        >>> check_data_rows(lambda x: check_input("x", x, event_shape=(2,)), torch.zeros(3, 2))
        >>> check_data_rows(lambda x: check_input("x", x), torch.tensor([[0.0], [float("nan")]]))
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: x: expected finite values in every row, got 1 rows ...
    """
    try:
        with pyro.validation_enabled(True):
            check_x(x)  # type: ignore[arg-type]
    except Exception:
        if isinstance(x, Tensor) and x.dim() >= 2:
            try:
                check_finite_rows("x", x, first_row)
            except ArgumentError as named:  # a non-finite row is reported first, by its row
                raise named from None
        raise


def check_per_point(name: str, out: object, inputs: Tensor) -> Tensor:
    """Check that a callback ``name`` returned one value per row of ``inputs``.

    Raises ``ValueError`` naming ``name``, the shape expected (``(N,)`` for ``N`` rows)
    and the shape or type returned.

    Example:
        >>> check_per_point("log_prob", torch.zeros(3), torch.ones(3, 2)).shape
        torch.Size([3])
    """
    if not isinstance(out, Tensor) or out.shape != inputs.shape[:1]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ArgumentError(
            f"{name}: expected an output of shape ({inputs.shape[0]},) for inputs of shape "
            f"{tuple(inputs.shape)}, got {got}"
        )
    return out


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ``>= minimum``.

    Example:
        >>> check_positive_int("num_layers", 3)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: expected an int >= {minimum}, got {_describe(value)}")
    if value < minimum:
        raise ArgumentError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    """Check that ``value`` is a finite real number ``> 0`` (or ``>= 0``).

    Example:
        >>> check_positive("lr", 1e-3)
        0.001
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name}: expected a real number, got {_describe(value)}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ArgumentError(f"{name}: expected a finite number {bound}, got {value}")
    return float(value)


def check_probability(name: str, value: object) -> float:
    """Check that ``value`` lies in ``[0, 1]``.

    Example:
        >>> check_probability("fraction", 0.25)
        0.25
    """
    value = check_positive(name, value, allow_zero=True)
    if value > 1:
        raise ArgumentError(f"{name}: expected a number in [0, 1], got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> str:
    """Check that ``value`` is one of ``choices``.

    Example:
        >>> check_choice("flow", "maf", ("maf", "realnvp"))
        'maf'
    """
    if value not in choices:
        raise ArgumentError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_matches(name: str, x: Tensor, reference: Tensor, owner: str = "the model's") -> Tensor:
    """Check that ``x`` has the dtype and device of ``reference`` (e.g. a model's buffer).

    Example:
        >>> check_matches("x", torch.zeros(2), torch.ones(3)).shape
        torch.Size([2])
    """
    if x.dtype != reference.dtype or x.device != reference.device:
        raise ArgumentError(
            f"{name}: expected dtype {reference.dtype} on device {reference.device} ({owner}), "
            f"got dtype {x.dtype} on device {x.device}"
        )
    return x


def check_input(
    name: str,
    x: object,
    reference: Tensor | None = None,
    *,
    event_shape: tuple[int, ...] | None = None,
    min_dim: int | None = None,
    nonempty: bool = True,
    finite: bool = True,
    owner: str = "the model's",
) -> Tensor:
    r"""Check a tensor argument against a module's own tensor; values only under validation.

    Runs the type, dtype, shape and emptiness checks of :func:`check_tensor`, then
    :func:`check_matches` against ``reference`` (dtype and device), and, when ``finite``
    and Pyro's validation is enabled (:func:`pyro.enable_validation`), :func:`check_finite`.
    The device is compared before any value is read, so a tensor on another device gets
    this message rather than an error from inside torch.

    Args:
        name: the argument's name, used in the error message.
        x: the value given.
        reference: a tensor of the module (a parameter or buffer); ``None`` skips the
            dtype and device check.
        event_shape: required trailing shape.
        min_dim: smallest number of dimensions.
        nonempty: require at least one element.
        finite: check for non-finite values while validation is enabled.
        owner: whose dtype and device ``reference`` stands for, for the message.

    Returns:
        ``x`` unchanged.

    Example:
        >>> check_input("x", torch.zeros(3, 2), torch.ones(1), event_shape=(2,)).shape
        torch.Size([3, 2])
    """
    check_tensor(name, x, event_shape=event_shape, min_dim=min_dim, finite=False, nonempty=nonempty)
    assert isinstance(x, Tensor)
    if reference is not None:
        check_matches(name, x, reference, owner)
    if finite and is_validation_enabled():
        check_finite(name, x)
    return x


def check_widths(
    name: str, dims: object, minimum: int = 1, *, allow_empty: bool = False
) -> list[int]:
    """Check a list (or tuple) of layer widths, each an int ``>= minimum``.

    An empty list (no hidden layer) is refused unless ``allow_empty``: Pyro's networks
    (``DenseNN``, ``AutoRegressiveNN``) need at least one hidden layer.

    Example:
        >>> check_widths("hidden_dims", (8, 8))
        [8, 8]
    """
    if not isinstance(dims, list | tuple):
        raise ArgumentTypeError(f"{name}: expected a list of ints, got {dims!r}")
    if not dims and not allow_empty:
        raise ArgumentError(
            f"{name}: expected a non-empty list of ints (at least one hidden layer), got {dims!r}"
        )
    return [check_positive_int(name, d, minimum=minimum) for d in dims]


def check_bool(name: str, value: object, *, allow_none: bool = False) -> bool | None:
    """Check that ``value`` is ``True`` or ``False`` (or ``None`` where that means a default).

    A truthy string such as ``"no"`` or an int is refused rather than read as a flag.

    Example:
        >>> check_bool("batch_norm", False)
        False
    """
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    want = "True, False or None" if allow_none else "True or False"
    raise ArgumentTypeError(f"{name}: expected {want}, got {_describe(value)}")


def check_broadcast(
    name: str, shape: Sequence[int], other: Sequence[int], other_name: str
) -> torch.Size:
    """Return the broadcast of two batch shapes, or raise ``ValueError`` naming ``name``.

    Example:
        >>> check_broadcast("z", (4, 1), (3,), "context")
        torch.Size([4, 3])
    """
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(other))
    except RuntimeError:
        raise ArgumentError(
            f"{name}: expected a batch shape that broadcasts with {other_name}'s "
            f"{tuple(other)}, got {tuple(shape)}"
        ) from None


def check_bounds(
    name: str,
    x: Tensor,
    lower: float | None = None,
    upper: float | None = None,
    what: str = "values",
) -> Tensor:
    """Raise ``ValueError`` naming ``name`` if entries of ``x`` lie outside ``[lower, upper]``.

    Reads the values (a device synchronisation): call it where validation is enabled.

    Example:
        >>> check_bounds("p", torch.tensor([0.0, 1.0]), 0, 1).tolist()
        [0.0, 1.0]
    """
    if x.is_meta or x.numel() == 0:
        return x
    low, high = x.min().item(), x.max().item()
    if lower is not None and upper is not None:
        if low < lower or high > upper:
            raise ArgumentError(
                f"{name}: expected {what} in [{lower:g}, {upper:g}], got values in "
                f"[{low:g}, {high:g}]"
            )
    elif lower is not None and low < lower:
        raise ArgumentError(f"{name}: expected {what} >= {lower:g}, got min {low:g}")
    elif upper is not None and high > upper:
        raise ArgumentError(f"{name}: expected {what} <= {upper:g}, got max {high:g}")
    return x


def reference_tensor(obj: object) -> Tensor | None:
    """The first parameter (else buffer) of a module, to check inputs' dtype and device.

    ``functools.partial`` objects (e.g. a network with its context bound) are unwrapped;
    anything else gives ``None``.

    Example:
        >>> reference_tensor(torch.nn.Linear(2, 3)).shape
        torch.Size([3, 2])
    """
    while isinstance(obj, functools.partial):
        obj = obj.func
    if not isinstance(obj, nn.Module):
        return None
    for tensor in obj.parameters():
        return tensor
    for tensor in obj.buffers():
        if tensor.is_floating_point():
            return tensor
    return None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or CUDA when available and the CPU otherwise.

    Refused with an :class:`~pyro_manifold.errors.ArgumentError` naming ``device``: a name
    torch does not know, a device that holds no data (``"meta"``), and an absent CUDA
    device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("meta")
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: device: expected a device that holds data ...
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ArgumentError(
            f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from e
    if resolved.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ArgumentError(
            f"device: expected a device that holds data ('cpu', 'cuda', ...), got {device!r}"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device: expected an available device, got {device!r} (no CUDA here)")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ArgumentError(
            f"device: expected one of the {torch.cuda.device_count()} CUDA devices, got {device!r}"
        )
    return resolved
