"""A terminal progress bar for an audit: fold models x epochs, with tqdm's rate and ETA.

The bar counts model-epochs (K*L models x epochs), so a unit of 10 models finishing an epoch advances it
by 10, and units trained one after another fill it at a steady rate. It is shown only when asked for
(the CLI asks when stdout is a terminal); otherwise every event is ignored.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol, TextIO

from tqdm import tqdm


class ProgressLike(Protocol):
    """The fields of ``models.audit.ProgressEvent`` this bar reads."""

    @property
    def model_ids(self) -> tuple[int, ...]: ...

    @property
    def epoch(self) -> int: ...

    @property
    def epochs(self) -> int: ...

    @property
    def phase(self) -> str: ...


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class AuditProgress:
    """Callable progress sink for ``run_audit(progress=...)``; use as a context manager."""

    def __init__(
        self, total_models: int, epochs: int, *, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.total_models = total_models
        self.epochs = epochs
        self._epochs_done: dict[tuple[int, ...], int] = {}
        self._bar: tqdm[None] | None = None
        if enabled:
            self._bar = tqdm(
                total=total_models * epochs,
                unit="model-epoch",
                desc="audit",
                file=stream if stream is not None else sys.stderr,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    @property
    def completed(self) -> int:
        """Model-epochs trained so far."""
        return sum(len(ids) * epoch for ids, epoch in self._epochs_done.items())

    @property
    def models_finished(self) -> int:
        return sum(len(ids) for ids, epoch in self._epochs_done.items() if epoch >= self.epochs)

    def __call__(self, event: ProgressLike) -> None:
        if event.phase == "train":
            # A sequential unit reports each model alone; a batched one reports all its models together.
            self._epochs_done[tuple(event.model_ids)] = event.epoch
        if self._bar is None:
            return
        self._bar.n = self.completed
        first, last = min(event.model_ids), max(event.model_ids)
        models = f"{first}" if first == last else f"{first}-{last}"
        self._bar.set_postfix_str(
            f"models {models} epoch {event.epoch}/{event.epochs} {event.phase}, "
            f"{self.models_finished}/{self.total_models} models done",
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> AuditProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
