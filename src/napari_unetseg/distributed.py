"""Segment on a dask.distributed cluster: runs of slices as tasks, labels written straight into a zarr store.

The result is the one :func:`~.inference.segment` gives in one process, whatever the scheduling:

1. Segment. Each task segments a run of planes (whole network batches, as in one process) with
   a model its worker loaded once, writes their labels into the output (one chunk per plane, so
   no two tasks share a chunk), with instance ids from 1 in every plane, and returns each
   plane's object count.
2. Number. The single-process engine continues each plane's ids after the highest id so far;
   per-plane ids are 1..n, so that offset is the running sum of the counts before the plane.
   Tasks add these offsets in place. A plane whose highest id still equals its count gets its
   offset, one that has it already is left alone, so a rerun task never adds it twice.
3. Link (``stitch_z``, ``z_method="linking"``). On the client, slice pair by slice pair along Z,
   with the offsets.

3D objects (``stitch_z`` with the default ``z_method="consensus"``) are the Z-slabs of
:mod:`.slabs` as tasks: the client measures each stack's object size and normalisation levels and
cuts it into the slabs one process would; each task segments one slab and writes its core with the
slab's own ids marked :data:`UNNUMBERED`, returning the few planes numbering needs
(:class:`~.slabs.SlabEdges`); the client numbers the slabs in Z order as one process does, and
numbering tasks replace the marked ids (ids already numbered are left alone, so a rerun is harmless).

Dask reruns the tasks of a worker that died (and, :data:`TASK_RETRIES` times, a task that
raised); a rerun task rewrites the same planes with the same labels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
from dask.system import CPU_COUNT
from distributed import Client, KilledWorker, WorkerPlugin, as_completed

from .axes import AxesLayout, labels_spec, parse_axes
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .engine_settings import EngineSettings
from .inference import Z_METHODS, predict_with_backoff, stitch_plane
from .io import probe_image, read_image
from .normalize import check_image
from .predictor import PlanePredictor, halve_batch, planes_per_batch, resolve_checkpoint
from .size import SizePlan, plan_size, size_for, zoomed_length
from .slabs import (
    Slab,
    SlabEdges,
    StackPlan,
    StackPlanes,
    iter_segment_slab,
    number_slab,
    plan_stack,
    stack_indices,
    stack_options,
)
from .volume import run_to_end

#: Times dask reruns a task that raised (e.g. on a flaky network file system).
TASK_RETRIES = 2
#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT_S = 10.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build the predictor: the checkpoint file, its SHA-256 and the engine settings
    (frozen, so the spec keys the worker's predictor cache)."""

    path: str
    sha256: str
    settings: EngineSettings


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _load_predictor(spec: ModelSpec) -> PlanePredictor:
    """The predictor of ``spec``, after checking that this worker's checkpoint file is the client's."""
    checkpoint = load_checkpoint(spec.path)
    if _sha256(spec.path) != spec.sha256:
        raise CheckpointError(f"{spec.path}: this worker's file differs from the client's; copy the same checkpoint")
    return PlanePredictor(checkpoint, spec.settings)


def worker_predictor(spec: ModelSpec) -> PlanePredictor:
    """The predictor of ``spec``, loaded once per worker process and shared by all its tasks (and threads)."""
    # OpenMP counts threads per calling thread: give this task thread the worker's PyTorch count
    torch.set_num_threads(torch.get_num_threads())
    with _LOAD_LOCK:
        return _load_predictor(spec)


@lru_cache(maxsize=4)
def _open_file(path: str, mtime_ns: int, size: int) -> Any:
    """An input file opened once per worker process (lazily, if large); a changed file is opened anew."""
    return read_image(path)


def _open_image(source: Any) -> Any:
    """The image of a task: a path is opened through the worker's cache, an array-like is itself."""
    if not isinstance(source, str):
        return source
    stat = os.stat(source)
    return _open_file(source, stat.st_mtime_ns, stat.st_size)


def _segment_task(
    source: Any, out: Any, axes: str, spec: ModelSpec, planes: list[tuple[int, ...]], diameter: float | None
) -> list[int]:
    """Segment ``planes`` into ``out``, instance ids from 1 in each plane; return each plane's object count.

    ``diameter`` is the objects' diameter the client measured (None: the image's scale), so that
    every task rescales the planes alike.

    Out of memory, the worker halves its batch and goes on, as one process does
    (:func:`~.inference.predict_with_backoff`); it keeps the smaller batch for its later tasks.
    """
    predictor = worker_predictor(spec)
    image = _open_image(source)
    instance = predictor.checkpoint.info.mode == "instance"
    counts = []
    for results, note in predict_with_backoff(image, AxesLayout(axes), predictor, planes, diameter):
        if note:
            logger.warning(note)
        for plane in results:
            out[plane.index] = plane.labels
            counts.append(int(plane.labels.max()) if instance and plane.labels.size else 0)
    return counts


def _with_offset(labels: np.ndarray, count: int, offset: int) -> np.ndarray:
    """A plane's ``labels`` with ``offset`` added to its ids, unless they have it already (highest id != count)."""
    if count and offset and int(labels.max()) == count:
        labels[labels > 0] += np.uint32(offset)
    return labels


def _offset_task(out: Any, planes: list[tuple[int, ...]], counts: list[int], offsets: list[int]) -> None:
    """Give the ``planes`` of ``out`` their id offsets in place (a no-op for planes that have them)."""
    for index, count, offset in zip(planes, counts, offsets):
        if count and offset:
            out[index] = _with_offset(np.asarray(out[index]), count, offset)


#: Added to a slab's own ids while it waits for its numbering; numbered ids stay below it.
UNNUMBERED = np.uint32(2**31)


def _slab_task(
    source: Any, out: Any, axes: str, spec: ModelSpec, indices: list[tuple[int, ...]], plan: StackPlan, slab: Slab,
) -> SlabEdges:
    """Segment one Z-slab of the stack whose planes are ``indices``; write its core into ``out`` with its own
    ids plus :data:`UNNUMBERED` and return its :class:`~.slabs.SlabEdges`. Out of memory, the worker halves
    its batch and segments the slab again, as one process does."""
    predictor = worker_predictor(spec)
    planes = StackPlanes(_open_image(source), AxesLayout(axes), indices)
    while True:
        try:
            core, edges = run_to_end(iter_segment_slab(planes, slab, plan, predictor.probabilities, predictor.labels))
            break
        except Exception as exc:
            logger.warning(halve_batch(predictor, exc))
    for z, labels in zip(range(slab.core_start, slab.core_stop), core):
        out[indices[z]] = np.where(labels > 0, labels + UNNUMBERED, 0).astype(np.uint32)
    return edges


def _number_task(out: Any, planes: list[tuple[int, ...]], mapping: np.ndarray) -> None:
    """Give the marked ids of ``planes`` their numbers (``mapping``: a slab id -> the result's id)."""
    for index in planes:
        labels = np.asarray(out[index])
        marked = labels >= UNNUMBERED
        if marked.any():
            labels[marked] = mapping[labels[marked] - UNNUMBERED]
            out[index] = labels


def _segment_objects_3d(
    source: Any, out: Any, layout: AxesLayout, checkpoint: Checkpoint, client: Client, settings: EngineSettings,
    voxel_size: Sequence[float] | None, diameter: float | str | None, progress: Callable[[int, int], None] | None,
) -> None:
    """3D objects of every (Z, Y, X) stack of ``source`` into ``out``: slabs as tasks, numbered on the client."""
    image = read_image(source) if isinstance(source, str) else source
    local = PlanePredictor(checkpoint, settings.with_changes(device="cpu"))
    options = stack_options(local, voxel_size, diameter)
    stacks = [(indices, plan_stack(StackPlanes(image, layout, indices), local.probabilities, local.labels, **options))
              for indices in stack_indices(tuple(image.shape), layout)]
    spec = _model_spec(checkpoint, settings)
    jobs = [(indices, plan, slab) for indices, plan in stacks for slab in plan.slabs]
    calls = [(source, out, layout.axes, spec, indices, plan, slab) for indices, plan, slab in jobs]
    sizes = [slab.core_stop - slab.core_start for _, _, slab in jobs]
    all_edges = _run_tasks(client, "slab", _slab_task, calls, sizes, progress)
    numbering, objects = [], 0
    for (indices, plan, slab), edges in zip(jobs, all_edges):
        if slab.core_start == 0:  # a stack's first slab: nothing to match before it
            tail = np.zeros((0, *edges.head.shape[1:]), np.uint32)
        mapping, objects = number_slab(edges, tail, objects)
        numbering.append((out, indices[slab.core_start : slab.core_stop], mapping))
        tail = mapping[edges.tail]
    if objects >= UNNUMBERED:
        raise ValueError(f"{objects} objects do not fit below the marks of unnumbered ids (2**31)")
    _run_tasks(client, "number", _number_task, numbering, sizes)


def _run_tasks(
    client: Client,
    name: str,
    function: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    sizes: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Run ``function(*call)`` for every call on the cluster; return the results in call order.

    ``progress(done, total)`` counts the ``sizes`` of finished calls. Each future is released as
    soon as its result is here, so the scheduler never recomputes a finished task when a worker
    dies later; on error (or Ctrl-C) the unfinished tasks are cancelled. A task whose workers
    kept dying (dask gives up after ``distributed.scheduler.allowed-failures``) ends the run with
    a :class:`ChildProcessError`.
    """
    token = uuid.uuid4().hex
    futures = [
        client.submit(function, *call, key=f"unetseg-{name}-{token}-{i}", retries=TASK_RETRIES)
        for i, call in enumerate(calls)
    ]
    position = {future.key: i for i, future in enumerate(futures)}
    pending = set(position)
    results: list[Any] = [None] * len(futures)
    done, total = 0, sum(sizes)
    try:
        for future in as_completed(futures):
            i = position[future.key]
            try:
                results[i] = future.result()
            except KilledWorker as exc:
                raise ChildProcessError(
                    f"dask gave up on task {future.key}: its worker died each time it ran it "
                    "(out of memory? try a smaller batch size)"
                ) from exc
            pending.discard(future.key)
            future.release()
            done += sizes[i]
            if progress is not None:
                progress(done, total)
    finally:
        client.cancel([future for future in futures if future.key in pending])
    return results


def _check_output(out: Any, shape: tuple[int, ...]) -> None:
    if tuple(out.shape) != shape:
        raise ValueError(f"the output has shape {tuple(out.shape)}, the labels of this image need {shape}")
    plane_chunks = (1,) * (len(shape) - 2) + tuple(max(1, n) for n in shape[-2:])
    if tuple(getattr(out, "chunks", ())) != plane_chunks:
        raise ValueError(
            "the output must be a zarr array with one chunk per 2D plane (see io.create_labels_zarr), "
            "so that no two tasks write the same chunk"
        )


def segment_distributed(
    image: str | os.PathLike | Any,
    out: Any,
    model: Checkpoint | str | os.PathLike,
    client: Client,
    settings: EngineSettings = EngineSettings(),
    *,
    axes: str | None = None,
    stitch_z: bool = False,
    z_method: str = "consensus",
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    planes_per_task: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Segment ``image`` into ``out`` on the cluster of ``client``; the labels equal :func:`~.inference.segment`'s.

    ``image``: a path every worker can open (TIFF, zarr, OME-Zarr) or a picklable array-like such
    as a zarr array. ``out``: a zarr array of the labels' shape with one chunk per 2D plane
    (:func:`~.io.create_labels_zarr`) on storage every worker can write; it is returned.
    ``model``: a checkpoint file or built-in model name; each worker loads the file once, from
    the same path, and runs it as ``settings`` say (the device is chosen on the worker). A task
    is a run of about ``planes_per_task`` planes (whole batches);
    ``progress(done, total)`` counts the planes of finished tasks. ``diameter`` as in
    :func:`~.inference.iter_segment`; ``"auto"`` is measured here, on the client, before the tasks.
    ``stitch_z``, ``z_method`` and ``voxel_size`` as in :func:`~.inference.segment`: 3D objects by
    consensus run a task per Z-slab (see the module docstring); linking segments planes as tasks and
    links them here.
    """
    checkpoint = resolve_checkpoint(model)
    if checkpoint.path is None:
        raise ValueError("the model must be saved as a checkpoint file so that the workers can load it")
    source = os.fspath(Path(image).absolute()) if isinstance(image, (str, os.PathLike)) else image
    described = probe_image(source) if isinstance(source, str) else source
    check_image(described, os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image")
    shape = tuple(described.shape)
    layout = parse_axes(shape, axes)
    out_shape, _ = labels_spec(shape, layout, checkpoint.info.mode)
    _check_output(out, out_shape)
    if z_method not in Z_METHODS:
        raise ValueError(f"z_method must be one of {', '.join(Z_METHODS)}, got {z_method!r}")
    if stitch_z and z_method == "consensus" and "Z" in layout.plane_axes and checkpoint.info.mode == "instance":
        _segment_objects_3d(source, out, layout, checkpoint, client, settings, voxel_size, diameter, progress)
        return out
    # runs of whole batches, so that workers batch planes as one process does (unless a GPU
    # worker has to shrink its batch to fit its memory, or picks the size itself: None)
    size = _client_size(source, layout, checkpoint, settings, diameter)
    height, width = (zoomed_length(n, size.zoom) for n in out_shape[-2:])  # the planes the network sees
    batch_size, tile_size = settings.batch_size, settings.tile_size
    per_batch = planes_per_batch(checkpoint.model, height, width, batch_size, tile_size) if batch_size else 1
    per_task = per_batch * max(1, -(-planes_per_task // per_batch))
    order = list(np.ndindex(*out_shape[:-2]))
    runs = [order[start : start + per_task] for start in range(0, len(order), per_task)]
    spec = _model_spec(checkpoint, settings)
    sizes = [len(run) for run in runs]
    calls = [(source, out, layout.axes, spec, run, size.diameter if size.rescales else None) for run in runs]
    run_counts = _run_tasks(client, "segment", _segment_task, calls, sizes, progress)
    if checkpoint.info.mode != "instance":
        return out
    counts = [count for run in run_counts for count in run]
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if offsets[-1] > np.iinfo(np.uint32).max:
        raise ValueError(f"{offsets[-1]} objects do not fit in 32-bit labels")
    offsets = offsets[:-1].tolist()
    if stitch_z and "Z" in layout.plane_axes:
        z_axis = layout.plane_axes.index("Z")
        for index, count, offset in zip(order, counts, offsets):
            labels = _with_offset(np.asarray(out[index]), count, offset)
            out[index] = stitch_plane(out, index, labels, z_axis)
        return out
    starts = np.cumsum([0, *sizes])
    calls = [(out, run, counts[a:b], offsets[a:b]) for run, a, b in zip(runs, starts, starts[1:])]
    _run_tasks(client, "offset", _offset_task, calls, sizes)
    return out


def _model_spec(checkpoint: Checkpoint, settings: EngineSettings) -> ModelSpec:
    path = Path(checkpoint.path).absolute()
    return ModelSpec(os.fspath(path), _sha256(path), settings)


def _client_size(
    source: Any, layout: AxesLayout, checkpoint: Checkpoint, settings: EngineSettings, diameter: float | str | None
) -> SizePlan:
    """How every task rescales the planes: :func:`~.size.plan_size` on the client (a first pass over a few
    planes, on this machine's CPU, when the diameter is ``"auto"``)."""
    if diameter != "auto" or checkpoint.info.mode != "instance":
        return size_for(checkpoint.info, diameter)
    image = read_image(source) if isinstance(source, str) else source
    return plan_size(image, layout, PlanePredictor(checkpoint, settings.with_changes(device="cpu")), diameter)


def connect(address: str, timeout: float | None = None) -> Client:
    """A client of the scheduler at ``address`` (e.g. ``tcp://10.0.0.5:8786``); ConnectionError if unreachable.

    Waits ``timeout`` seconds (default :data:`CONNECT_TIMEOUT_S`).
    """
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S if timeout is None else timeout)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectionError(f"cannot reach the dask scheduler at {address}: {reason}") from None


class TorchThreads(WorkerPlugin):
    """Sets every worker's PyTorch thread count, also after a restart (dask starts workers with one)."""

    name = "napari-unetseg-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        torch.set_num_threads(self.threads)


def local_client(n_workers: int, verbose: bool = False) -> Client:
    """A client of ``n_workers`` worker processes started on this machine (they stop with the client).

    The cluster's own log messages (worker start-up, task tracebacks) go to stderr only when
    ``verbose``: a failing task already ends the run with its error.

    Each worker runs one task at a time with an equal share of the cores for PyTorch, so one
    worker is about as fast as one process. Dask's ``MALLOC_TRIM_THRESHOLD_`` is left unset: it
    makes glibc give every freed plane back to the system and fault it in again, which made
    segmenting about 30% slower. The scheduler's web server takes a free port, so several
    clusters can run at once.
    """
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        client = Client(
            n_workers=n_workers, threads_per_worker=1, dashboard_address=":0",
            silence_logs=logging.WARNING if verbose else logging.CRITICAL,
        )
    client.register_plugin(TorchThreads(max(1, CPU_COUNT // n_workers)))
    return client
