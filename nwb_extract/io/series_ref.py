"""Where an imaging series is, as a small picklable value that opens it anywhere (e.g. on a Dask worker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nwb_extract.io import dandi
from nwb_extract.io.movie import FrameBlockReader, ImagingSource, open_series

__all__ = ["SeriesRef"]


@dataclass(frozen=True)
class SeriesRef:
    """An imaging series by address: a few strings, never frames.

    Attributes
    ----------
    source : str or RemoteAsset
        A local NWB file or NWB Zarr folder, an http(s) URL (streamed), or a resolved DANDI asset (streamed).
    series : str or None
        Series name or path (None: the file's only imaging series).
    frames : (int, int) or None
        Stored frame range ``(start, stop)``; None: all frames.
    cache_dir : str or None
        remfile disk cache of a streamed DANDI asset.
    """

    source: str | dandi.RemoteAsset
    series: str | None = None
    frames: tuple[int | None, int | None] | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))

    @contextmanager
    def open(self) -> Iterator[ImagingSource]:
        """The series opened for lazy, block-wise reading (:func:`nwb_extract.io.movie.open_series`), closed on
        exit."""
        if isinstance(self.source, dandi.RemoteAsset):
            with dandi.open_asset(self.source, self.series, frames=self.frames, cache_dir=self.cache_dir) as src:
                yield src
        else:
            with open_series(self.source, self.series, frames=self.frames) as src:
                yield src

    @contextmanager
    def open_frames(self) -> Iterator[FrameBlockReader]:
        """Only the frames, as :attr:`ImagingSource.data`. A local HDF5 file whose series path and frame range are
        known (a series the client opened already) is read with h5py alone, without parsing the NWB file again
        (per-task time and memory); anything else goes through :meth:`open`."""
        dataset_path = None if self.series is None else f"{self.series.strip('/')}/data"
        if dataset_path is not None and self.frames is not None and None not in self.frames \
                and isinstance(self.source, str) and os.path.isfile(self.source):
            import h5py

            if h5py.is_hdf5(self.source):
                with h5py.File(self.source, "r") as file:
                    data = file.get(dataset_path)
                    if isinstance(data, h5py.Dataset) and data.ndim == 3:
                        yield FrameBlockReader(data, *self.frames)
                        return
        with self.open() as src:
            yield src.data
