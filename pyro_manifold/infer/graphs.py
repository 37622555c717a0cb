r"""A training step captured once as a CUDA graph and replayed: ``fit(cuda_graph=True)``.

A step of SVI on a small model is bound by the host: Pyro's tracing, the ELBO's
bookkeeping and one kernel launch per operation cost more than the kernels themselves.
A CUDA graph records the kernels of one whole step (the ELBO, the backward pass, the
finiteness flag, the fused optimiser update and the buffer restore) once, and each later
step replays them with one launch, after copying the new batch into the graph's input
tensors. The Python code of the model and guide then runs once, at capture.

That is exact only for a step whose work does not depend on Python state that changes
from step to step. :func:`capture_step` therefore refuses (returns the reason, and
``fit`` goes on eagerly with a warning) when a module's extra state (e.g. a step counter
kept as a Python int) changed during the eager warm-up steps, when a layer edited a
parameter in place from Python, or when the capture itself fails (a host read such as
``.item()`` or ``bool(tensor)`` inside the step, an operation that cannot be captured).

Status: ``fit``'s control flow around it (warm-up, capture, replay, fall-back) is tested
on the CPU with a stand-in for the capture; the capture itself has not yet run on a GPU.
The device tests ``tests/test_device.py -k cuda_graph`` wait for a session lent one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pyro_manifold.errors import ArgumentError

__all__ = ["CapturedStep", "capture_step", "extra_states", "same_state"]


class CapturedStep:
    r"""One step, captured as a CUDA graph; calling it runs the step on a new batch.

    The batch is copied into the graph's own input tensors (same shapes and dtypes as
    the batch it was captured with), the graph is replayed, and the step's outputs are
    returned as fresh tensors (the graph's own outputs are overwritten by the next call).

    Args:
        graph: the captured graph.
        inputs: the graph's input tensors.
        outputs: the graph's output tensors.

    Example:
        >>> if torch.cuda.is_available():  # doctest: +SKIP
        ...     w = torch.ones(3, device="cuda")
        ...     step = capture_step(lambda x: ((w * x).sum(),), (torch.ones(3, device="cuda"),))
        ...     step(torch.full((3,), 2.0, device="cuda"))[0].item()
        6.0
    """

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[Tensor, ...],
                 outputs: tuple[Tensor, ...]) -> None:  # fmt: skip
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    def accepts(self, batch: Sequence[Tensor]) -> bool:
        """Whether ``batch`` has the captured batch's shapes, dtypes and device."""
        return len(batch) == len(self.inputs) and all(
            b.shape == i.shape and b.dtype == i.dtype and b.device == i.device
            for b, i in zip(batch, self.inputs, strict=False)
        )

    def __call__(self, *batch: Tensor) -> tuple[Tensor, ...]:
        """Copy ``batch`` into the inputs, replay, and return copies of the outputs."""
        if not self.accepts(batch):
            raise ArgumentError(
                f"batch: expected tensors like the captured batch (shapes "
                f"{[tuple(i.shape) for i in self.inputs]}, dtypes "
                f"{[i.dtype for i in self.inputs]}, on {self.inputs[0].device}), got shapes "
                f"{[tuple(b.shape) for b in batch]}, dtypes {[b.dtype for b in batch]}"
            )
        for i, b in zip(self.inputs, batch, strict=True):
            i.copy_(b)
        self.graph.replay()
        return tuple(o.clone() for o in self.outputs)


def extra_states(modules: Sequence[nn.Module]) -> list[object]:
    """The ``get_extra_state()`` of every submodule that defines it (Python-side state).

    Example:
        >>> extra_states([torch.nn.Linear(2, 2)])
        []
    """
    states = []
    for m in modules:
        for sub in m.modules():
            if type(sub).get_extra_state is not nn.Module.get_extra_state:
                states.append(sub.get_extra_state())
    return states


def same_state(a: object, b: object) -> bool:
    """Whether two extra states are equal (``False`` where ``==`` cannot say, e.g. tensors).

    Example:
        >>> same_state([{"step": 3}], [{"step": 3}]), same_state([{"step": 3}], [{"step": 4}])
        (True, False)
    """
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return False


def capture_step(
    step_fn: Callable[..., tuple[Tensor, ...]], batch: tuple[Tensor, ...]
) -> CapturedStep | str:
    r"""Capture ``step_fn(*batch)`` as a CUDA graph, or say why it cannot be.

    The kernels are recorded, not run: the caller replays the result for the step it
    captured. ``step_fn`` must return a tuple of tensors (the step's outputs) and must
    not read values back to the host.

    Args:
        step_fn: the step, called once here with the graph's input tensors.
        batch: an example batch on the CUDA device (its shapes are the graph's).

    Returns:
        A :class:`CapturedStep`, or a one-line reason (a string) when capture failed;
        then nothing of the step has run on the device.
    """
    if not all(t.is_cuda for t in batch):
        return "the batch is not on a CUDA device"
    inputs = tuple(t.clone() for t in batch)
    graph = torch.cuda.CUDAGraph()
    # capture on a stream of our own, entered and left here: a failed capture cannot
    # leave the caller on torch's capture stream
    stream = torch.cuda.Stream(device=batch[0].device)
    stream.wait_stream(torch.cuda.current_stream(batch[0].device))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on capture-time allocations
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                outputs = step_fn(*inputs)
    except Exception as e:  # noqa: BLE001 (any failure means: run eagerly)
        first = e  # the error that broke the capture, not "a previous error" after it
        while first.__context__ is not None:
            first = first.__context__
        torch.cuda.synchronize()
        return f"capture failed ({type(first).__name__}: {str(first).splitlines()[0][:200]})"
    torch.cuda.current_stream(batch[0].device).wait_stream(stream)
    if not isinstance(outputs, tuple) or not all(isinstance(o, Tensor) for o in outputs):
        return f"the step returned {type(outputs).__name__}, not a tuple of tensors"
    return CapturedStep(graph, inputs, outputs)
