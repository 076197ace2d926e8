"""The ``GraphTarget`` protocol, and the torch-free rules of a CUDA-graph runner.

The ``load-weights`` result of an engine that can replay its decode step from CUDA
graphs implements ``GraphTarget``, so a graph plugin (the built-in ``graphs``, or
another) works with any engine without importing it::

    target = runtime.result("load-weights")
    if isinstance(target, GraphTarget) and target.graph_support() is None:
        sizes = target.prepare_graphs(plan_capture_sizes((1, 2, 4, 8), 64).sizes)
        for size in sorted(sizes, reverse=True):  # largest first: one shared pool
            capture = target.capture_graph(size)
        target.use_graphs(lazy=False)

The rest of this module is what every rank of a graph runner decides per step, from
the step's metadata alone, so that all ranks decide alike with no collective:

* which captured size a decode batch of ``n`` sequences is padded to
  (:func:`padded_size`; above the largest size it runs uncaptured);
* which configured sizes are worth capturing at all (:func:`plan_capture_sizes`);
* the lazy rule (:class:`GraphBook`): a size is captured the first time a step
  needs it, *between* steps: that step runs uncaptured, the capture happens before
  the next step, and sizes already captured keep replaying meanwhile. A size whose
  capture failed runs uncaptured for good;
* how wide a captured step's attention context is (:func:`decode_context_width`).

Importing this module imports no torch.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import attrs
from rt.core.errors import ConfigError

# The most bytes a captured decode step's gathered attention context (K and V of every
# key of every padded sequence, one layer at a time) may take: it lives in the graph
# pool, and the step reads all of it whatever the true context lengths are.
GATHER_BUDGET_BYTES = 256 * 1024 * 1024


@attrs.frozen
class GraphCapture:
    """What capturing one batch size did on one rank.

    ``pool_bytes``: the graph pool's memory once this size is captured (the growth of
    the allocator's reserved memory since the graphs were set up); ``device_bytes``:
    the growth of the device's used memory over the same time (the pool plus library
    workspaces). ``error`` is None when the size was captured.
    """

    size: int
    seconds: float
    pool_bytes: int
    device_bytes: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class GraphTarget(Protocol):
    """A rank's model that can replay its decode step from CUDA graphs."""

    def graph_support(self) -> str | None:
        """None when this rank can capture graphs, else why not, as a skip reason
        (``"no CUDA device: CUDA graphs need one"``)."""
        ...

    def prepare_graphs(self, sizes: Sequence[int]) -> tuple[int, ...]:
        """Set up graphs for decode batches of ``sizes`` sequences (static buffers for
        the largest, one memory pool); returns the sizes it will capture."""
        ...

    def capture_graph(self, size: int) -> GraphCapture:
        """Warm and capture the decode step of ``size`` sequences, with whichever step
        function is active (compiled or eager). Every rank calls it at the same point
        (at TP > 1 the step holds collectives). A failure is returned, not raised, and
        marks the size uncapturable on every rank."""
        ...

    def use_graphs(self, *, lazy: bool) -> None:
        """Replay captured graphs from the next step on. ``lazy``: capture a size the
        first time a step needs it (between steps, :class:`GraphBook`)."""
        ...

    def graph_pool_bytes(self) -> int:
        """The memory the graphs hold now (see ``GraphCapture.pool_bytes``)."""
        ...


@attrs.frozen
class CaptureSizes:
    """The sizes to capture, and those left out because no step reaches them."""

    sizes: tuple[int, ...]
    dropped: tuple[int, ...] = ()


def plan_capture_sizes(requested: Iterable[int], max_num_seqs: int) -> CaptureSizes:
    """Sort and dedupe ``graphs.capture_sizes`` against ``scheduler.max_num_seqs``.

    A decode step has at most ``max_num_seqs`` sequences, so of the sizes above it only
    the smallest is kept (it pads the batches between the largest size below and
    ``max_num_seqs``); the others could never replay and are dropped (the stage notes
    them). An empty list is a ``ConfigError``.

    >>> plan_capture_sizes([8, 1, 32, 4, 16], 12)
    CaptureSizes(sizes=(1, 4, 8, 16), dropped=(32,))
    """
    sizes = sorted(set(requested))
    if not sizes:
        raise ConfigError(
            "graphs.capture_sizes is empty: list the decode batch sizes to capture "
            "(e.g. graphs.capture_sizes=1,2,4,8) or set graphs.mode=off"
        )
    keep = [s for s in sizes if s <= max_num_seqs]
    above = [s for s in sizes if s > max_num_seqs]
    if above and (not keep or keep[-1] < max_num_seqs):
        keep.append(above.pop(0))
    return CaptureSizes(tuple(keep), tuple(above))


def padded_size(sizes: Sequence[int], num_seqs: int) -> int | None:
    """The smallest of ``sizes`` (sorted) that holds ``num_seqs`` sequences, or None
    when none does (the step runs uncaptured).

    >>> padded_size((1, 2, 4, 8), 3), padded_size((1, 2, 4, 8), 9)
    (4, None)
    """
    if num_seqs < 1:
        return None
    i = bisect.bisect_left(sizes, num_seqs)
    return sizes[i] if i < len(sizes) else None


def decode_context_width(
    max_model_len: int,
    block_size: int,
    max_size: int,
    bytes_per_token: int,
    budget_bytes: int = GATHER_BUDGET_BYTES,
) -> int:
    """How many keys per sequence a captured decode step attends over.

    A graph has fixed shapes, so its attention gathers the same number of keys for
    every sequence and masks the tail: the model's longest context rounded up to whole
    blocks, capped so that ``max_size`` sequences' gathered K and V
    (``bytes_per_token`` each) fit ``budget_bytes``; at least one block. A step whose
    longest context exceeds it runs uncaptured.

    >>> decode_context_width(8192, 16, 32, 768)  # SmolLM2-135M, bfloat16
    8192
    >>> decode_context_width(131072, 16, 32, 4096)  # Llama-3-8B, bfloat16, TP=1
    2048
    """
    full = -(-max_model_len // block_size) * block_size
    cap = budget_bytes // max(1, max_size * bytes_per_token) // block_size * block_size
    return max(block_size, min(full, cap))


class GraphBook:
    """Which batch sizes are captured, waiting for a capture, or uncapturable.

    Every rank keeps one and feeds it the same steps in the same order, so every rank
    makes the same decisions: which size a step replays at (:meth:`plan`) and which
    sizes to capture before the next step (:meth:`take_waiting`).

    Example::

        book = GraphBook((1, 2, 4), lazy=True)
        book.plan(3, fits=True)   # None: size 4 is not captured yet; it waits
        book.take_waiting()       # [4]: capture it now, between steps
        book.captured_ok(4)
        book.plan(3, fits=True)   # 4: replay the graph of 4, one row of padding
    """

    def __init__(self, sizes: Iterable[int], lazy: bool) -> None:
        self.sizes = tuple(sorted(set(sizes)))
        self.lazy = lazy
        self.captured: set[int] = set()
        self.failed: dict[int, str] = {}  # size -> why its capture failed
        self.waiting: set[int] = set()  # needed by a step: captured before the next one

    def needed_size(self, num_seqs: int, fits: bool) -> int | None:
        """The size a decode step of ``num_seqs`` sequences pads to, skipping
        uncapturable sizes; None when the step cannot replay a graph (``fits`` is False:
        not a pure decode step, or a context too long for the graphs)."""
        if not fits:
            return None
        return padded_size([s for s in self.sizes if s not in self.failed], num_seqs)

    def plan(self, num_seqs: int, fits: bool) -> int | None:
        """The captured size to replay this step at, or None to run it uncaptured.
        Lazily, a needed size that is not captured yet waits for the next step."""
        size = self.needed_size(num_seqs, fits)
        if size is None:
            return None
        if size in self.captured:
            return size
        if self.lazy:
            self.waiting.add(size)
        return None

    def take_waiting(self) -> list[int]:
        """The sizes to capture now, between two steps, largest first."""
        sizes = sorted(self.waiting, reverse=True)
        self.waiting.clear()
        return sizes

    def captured_ok(self, size: int) -> None:
        self.captured.add(size)

    def capture_failed(self, size: int, reason: str) -> bool:
        """Mark ``size`` uncapturable for good; True the first time (note it once)."""
        first = size not in self.failed
        self.failed.setdefault(size, reason)
        self.captured.discard(size)
        self.waiting.discard(size)
        return first

    def drop_all(self) -> None:
        """Forget every captured graph (the step function they replay was replaced);
        from now on each size is captured again the next time a step needs it."""
        self.captured.clear()
        self.waiting.clear()
        self.lazy = True
