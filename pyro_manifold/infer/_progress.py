r"""The history and progress bar of ``fit``, read back every ``log_every`` steps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["TrainingLog", "write_json"]

HISTORY_KEYS = ("step", "loss", "lr", "time", "val_step", "val_loss")
MAX_RECENT = 64  # step losses held before they are folded into the window on the device


class TrainingLog:
    r"""Mean losses per logging window, validation losses, wall time, and a tqdm bar.

    Step losses stay on the device: they are summed there (bad steps left out) and read
    back once per :meth:`log`. The bar is shown on a terminal by default, never on a
    rank other than 0. Used as a context manager, it closes the bar on leaving.

    Args:
        num_steps: the run's total number of steps (the bar's length).
        device: where the step losses are summed.
        progress: show the bar (``None``: only on a terminal).
        show: ``False`` on ranks that never show a bar.

    Example:
        >>> log = TrainingLog(2, torch.device("cpu"), progress=False)
        >>> with log.running(0):
        ...     log.record(torch.tensor(3.0), torch.tensor(False))
        ...     log.log(1, lr=0.1)
        >>> log.history["loss"], log.history["lr"]
        ([3.0], [0.1])
    """

    def __init__(
        self, num_steps: int, device: torch.device, progress: bool | None = None, show: bool = True
    ) -> None:
        self.num_steps, self.device = num_steps, device
        self.disable = (None if progress is None else not progress) if show else True
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self.elapsed = 0.0
        self._start = time.perf_counter()
        self._window = torch.zeros((), device=device)
        self._count = torch.zeros((), device=device)
        self._recent: list[tuple[Tensor, Tensor]] = []
        self.bar: Any = None
        self._skipped = 0

    def state_dict(self) -> dict[str, Any]:
        """The history, the open logging window and the time trained so far (for a checkpoint).

        The window (the losses summed since the last log) is saved so that a run resumed
        between two logs logs the same mean as the uninterrupted run.
        """
        self._fold()
        return {"history": self.history, "elapsed": self.clock(),
                "loss_window": torch.stack([self._window, self._count]).detach().cpu()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the history, logging window and clock of a checkpoint."""
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.elapsed = float(state.get("elapsed", 0.0))
        window = state.get("loss_window")
        if window is not None:
            window = window.to(self.device, self._window.dtype)
            self._window, self._count = window[0].clone(), window[1].clone()

    def clock(self) -> float:
        """Seconds trained, resumed runs included."""
        return self.elapsed + time.perf_counter() - self._start

    def running(self, step: int) -> Any:
        """Start the clock and the bar at ``step``; a context manager that closes the bar."""
        self._start = time.perf_counter()
        self.bar = tqdm(total=self.num_steps, initial=step, disable=self.disable,
                        desc="fit", dynamic_ncols=True)  # fmt: skip
        return self.bar

    def record(self, loss: Tensor, bad: Tensor) -> None:
        """Keep a step's loss (per point) and its non-finite flag, on the device."""
        self._recent.append((loss, bad))
        if len(self._recent) >= MAX_RECENT:
            self._fold()

    def _fold(self) -> None:
        """Add the recent steps' losses (bad steps left out) to the window: a few kernels."""
        if not self._recent:
            return
        values = torch.stack([value for value, _ in self._recent])
        flags = torch.stack([flag for _, flag in self._recent])
        self._recent.clear()
        self._window = self._window + torch.where(flags, 0.0, values).sum()
        self._count = self._count + (~flags).sum()

    def log(self, step: int, lr: float) -> None:
        """Read the window back (one sync) and append its mean loss to the history."""
        self._fold()
        count = int(self._count)
        if not count:
            return
        mean = float(self._window) / count
        self._window.zero_()
        self._count.zero_()
        for key, value in zip(("step", "loss", "lr", "time"), (step, mean, lr, self.clock()),
                              strict=True):  # fmt: skip
            self.history[key].append(value)
        self.bar.set_postfix(loss=f"{mean:.4g}")

    def advance(self, skipped: int) -> None:
        """Move the bar on by one step, showing the number of skipped steps if any."""
        if skipped != self._skipped:
            self.bar.set_postfix(skipped=skipped)
            self._skipped = skipped
        self.bar.update(1)

    def validation(self, step: int, loss: float) -> None:
        """Append a validation loss."""
        self.history["val_step"].append(step)
        self.history["val_loss"].append(loss)

    def write(self, run_dir: Path | None) -> None:
        """Write ``run_dir/history.json`` atomically (nothing without a run directory)."""
        if run_dir is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "history.json", self.history)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
