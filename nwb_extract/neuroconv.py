"""neuroconv plugin: EXTRACT as a segmentation DataInterface, and :func:`register` for roiextractors and neuroconv.

:class:`NwbExtractSegmentationInterface` runs EXTRACT inside a neuroconv conversion (alone, or in an
``NWBConverter`` beside the imaging interface of the raw movie). Its ``add_to_nwbfile`` writes with the package's
own writer (:func:`nwb_extract.io.nwb_write.add_result_to_nwbfile`), so the file has exactly the layout of
``nwb-extract run`` (docs/nwb-layout.md): float32 image masks in the movie's stored axis order, the three trace
kinds in ``DfOverF``/``Fluorescence``, summary images and the ``ExtractRunInfo`` with the full config.
neuroconv's generic writer would put every trace into one ``Fluorescence`` (dropping the kinds it does not know),
write dense float64 masks and no run information.

Nothing is registered on import: call :func:`register` (idempotent) to list the extractor in roiextractors and the
interface in neuroconv (``interface_list``, ``interfaces_by_category["segmentation"]``, and the
``neuroconv.datainterfaces`` module, which is where YAML conversion specs look names up). Direct use in an
``NWBConverter`` subclass or ``ConverterPipe`` needs no registration.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from neuroconv.datainterfaces.ophys.basesegmentationextractorinterface import BaseSegmentationExtractorInterface
from neuroconv.utils import DeepDict

from nwb_extract.config import TRACE_KINDS, primary_trace_kind
from nwb_extract.errors import InputError
from nwb_extract.roiextractors import NwbExtractSegmentationExtractor, NwbSeriesImagingExtractor

__all__ = ["DEFAULT_METADATA_KEY", "REGISTRY_NAME", "NwbExtractSegmentationInterface", "register"]

DEFAULT_METADATA_KEY = "nwb_extract"
"""Key of the interface's entries in ``Ophys.PlaneSegmentations`` / ``RoiResponses`` / ``SegmentationImages``."""

REGISTRY_NAME = "NwbExtract"
"""Name of the interface in ``neuroconv.datainterfaces.interfaces_by_category["segmentation"]``."""

TIFF_SUFFIXES = (".tif", ".tiff")

_PLANE_FIELDS = ("name", "description", "indicator", "location", "excitation_lambda", "imaging_rate")


class NwbExtractSegmentationInterface(BaseSegmentationExtractorInterface):
    """Run EXTRACT on a movie (NWB series or TIFF) and add the cells to an NWB file, in nwb-extract's layout.

    The engine runs once, on the first access to the segmentation (``add_to_nwbfile``, ``run_conversion``, or
    ``interface.segmentation_extractor``); building the interface, ``get_metadata`` and the timestamp methods
    do not run it.
    """

    display_name = "EXTRACT (nwb-extract)"
    associated_suffixes = (".nwb", ".tif", ".tiff")
    info = "Runs the EXTRACT cell-extraction algorithm (robust matrix factorisation) on a calcium-imaging movie."

    @classmethod
    def get_extractor_class(cls) -> type[NwbExtractSegmentationExtractor]:
        """:class:`nwb_extract.roiextractors.NwbExtractSegmentationExtractor`."""
        return NwbExtractSegmentationExtractor

    def __init__(
        self,
        file_path: str,
        *,
        series_name: str | None = None,
        sampling_frequency: float | None = None,
        config: dict | str | None = None,
        backend: Literal["auto", "numpy", "cupy"] | None = None,
        verbose: bool = False,
        metadata_key: str | None = None,
    ) -> None:
        """
        Parameters
        ----------
        file_path : str
            The movie: an NWB file (HDF5), NWB Zarr folder or ``http(s)://`` URL (streamed), or a TIFF file.
        series_name : str, optional
            NWB only: name or path of the imaging series (needed when the file holds several).
        sampling_frequency : float, optional
            TIFF only (required there): frame rate in Hz.
        config : dict or str, optional
            EXTRACT config: a dict of EXTRACT parameters or a config file (.json, .yaml, .mat); defaults when
            omitted.
        backend : {"auto", "numpy", "cupy"}, optional
            Array backend, overriding the config's.
        verbose : bool
            neuroconv's verbosity flag.
        metadata_key : str, optional
            Key of this interface's metadata entries; default :data:`DEFAULT_METADATA_KEY`.
        """
        from nwb_extract.io import schema

        schema.get_run_info_class()  # our namespace must be loaded before neuroconv opens the output file
        super().__init__(file_path=file_path, series_name=series_name, sampling_frequency=sampling_frequency,
                         config=config, backend=backend, verbose=verbose,
                         metadata_key=metadata_key or DEFAULT_METADATA_KEY)

    def _initialize_extractor(self, interface_kwargs: dict) -> NwbExtractSegmentationExtractor:
        text = str(interface_kwargs["file_path"])
        self._dandi_fields: dict[str, str | None] = {}
        if text.lower().endswith(TIFF_SUFFIXES):
            imaging = _open_tiff(text, interface_kwargs.get("sampling_frequency"))
        else:
            from nwb_extract.io.dandi import RemoteAsset
            from nwb_extract.workflow import resolve_input

            source, self._dandi_fields = resolve_input(text)  # a DANDI address becomes its asset, streamed
            location = source.content_url if isinstance(source, RemoteAsset) else source
            imaging = NwbSeriesImagingExtractor(location, interface_kwargs.get("series_name"))
        return NwbExtractSegmentationExtractor(imaging, config=interface_kwargs.get("config"),
                                               backend=interface_kwargs.get("backend"))

    @property
    def nwb_source(self) -> Any:
        """The :class:`nwb_extract.io.movie.ImagingSource` of an NWB input (None for a TIFF input)."""
        imaging = self.segmentation_extractor.imaging
        return imaging.source if isinstance(imaging, NwbSeriesImagingExtractor) else None

    def get_metadata(self) -> DeepDict:
        """neuroconv metadata (dict format) naming every container the writer adds; no engine run.

        ``Ophys.PlaneSegmentations[key]`` links ``Ophys.ImagingPlanes[key]``: for an NWB input a copy of the
        source series' imaging plane (and ``Devices``), for a TIFF input a plane named ``ImagingPlane``, which is
        neuroconv's default, so in an ``NWBConverter`` the cells link the raw movie's plane. ``RoiResponses[key]``
        lists all three trace kinds (``raw``, ``nonneg``, ``baseline_adjusted``) under the names the writer gives
        them, and ``SegmentationImages[key]`` the three summary images. The writer keeps nwb-extract's container
        names (docs/nwb-layout.md); only the imaging-plane and device entries change what is written.
        """
        metadata = super().get_metadata()
        key = self.metadata_key
        source = self.nwb_source
        ophys = metadata.setdefault("Ophys", {})
        plane = {"name": "ImagingPlane"}
        if source is not None:
            nwbfile = source.nwbfile
            metadata["NWBFile"]["session_start_time"] = nwbfile.session_start_time
            metadata["NWBFile"]["session_description"] = nwbfile.session_description
            plane = _plane_metadata(source.imaging_plane, device_key=f"{key}_device")
            metadata.setdefault("Devices", {})[f"{key}_device"] = {
                "name": source.imaging_plane.device.name,
                "description": source.imaging_plane.device.description or "microscope"}
        ophys.setdefault("ImagingPlanes", {})[key] = plane
        ophys.setdefault("PlaneSegmentations", {})[key] = {
            "name": "PlaneSegmentation", "description": "EXTRACT cells (nwb-extract)",
            "imaging_plane_metadata_key": key}
        ophys.setdefault("RoiResponses", {})[key] = _trace_metadata(self.segmentation_extractor.config)
        ophys.setdefault("SegmentationImages", {})[key] = {
            name: {"name": name, "description": f"EXTRACT {name}"}
            for name in ("summary_image", "max_image", "F_per_pixel")}
        return metadata

    def add_to_nwbfile(
        self,
        nwbfile: Any,
        metadata: dict | None = None,
        *,
        stub_test: bool = False,
        stub_samples: int = 100,
        mask_type: Literal["image", "pixel"] = "image",
        run_name: str | None = None,
        include_eliminated: bool = False,
    ) -> None:
        """Run EXTRACT (once) and add the run to ``nwbfile`` with the layout of ``nwb-extract run``.

        Parameters
        ----------
        nwbfile : pynwb.NWBFile
            The file being converted.
        metadata : dict, optional
            neuroconv metadata; :meth:`get_metadata` when None. The imaging plane is found by the name in
            ``Ophys.ImagingPlanes[<imaging_plane_metadata_key>]`` (reused when the file has it, e.g. from an
            imaging interface of the same conversion) or created from that entry.
        stub_test : bool
            Write only the first ``stub_samples`` samples of the traces (the engine still runs on every frame).
        stub_samples : int
            Samples written with ``stub_test``.
        mask_type : {"image", "pixel"}
            Dense float32 ``image_mask`` or sparse ``pixel_mask``.
        run_name : str, optional
            Name of the run in the file (default ``run<n>``).
        include_eliminated : bool
            Also write the candidates quality control eliminated.
        """
        from neuroconv.tools.roiextractors.roiextractors import _add_imaging_plane_to_nwbfile

        from nwb_extract.io.nwb_write import add_result_to_nwbfile

        metadata = deepcopy(dict(metadata or self._get_metadata_for_writing()))
        extractor = self.segmentation_extractor
        result = extractor.result
        times = extractor.get_timestamps()
        if stub_test:
            n = min(int(stub_samples), result.n_frames or 0)
            result = replace(result, traces={kind: trace[:n] for kind, trace in result.traces.items()},
                             eliminated=None)
            times = times[:n]
        plane_key = metadata["Ophys"]["PlaneSegmentations"][self.metadata_key]["imaging_plane_metadata_key"]
        plane = _add_imaging_plane_to_nwbfile(nwbfile=nwbfile, metadata=metadata,
                                              imaging_plane_metadata=metadata["Ophys"]["ImagingPlanes"][plane_key])
        source = self.nwb_source
        info = None if source is None or stub_test else source.source_info(**self._dandi_fields)
        add_result_to_nwbfile(nwbfile, result, imaging_plane=plane, timing=_timing(times, extractor),
                              reference_series=_reference_series(nwbfile, plane, result.footprints.shape[1:]),
                              source=info, run_name=run_name, mask_type=mask_type,
                              include_eliminated=include_eliminated and not stub_test)


def _open_tiff(file_path: str, sampling_frequency: float | None) -> Any:
    from roiextractors import TiffImagingExtractor

    if sampling_frequency is None:
        raise InputError(f"{file_path} is a TIFF file: give its frame rate, sampling_frequency=<Hz>")
    if not Path(file_path).is_file():
        raise InputError(f"no such TIFF file: {file_path}")
    return TiffImagingExtractor(file_path=file_path, sampling_frequency=float(sampling_frequency))


def _plane_metadata(plane: Any, device_key: str) -> dict[str, Any]:
    """neuroconv ``ImagingPlanes`` entry copying a pynwb ImagingPlane (so the new file's plane matches it)."""
    entry = {name: _plain(getattr(plane, name)) for name in _PLANE_FIELDS if getattr(plane, name, None) is not None}
    entry["optical_channel"] = [{"name": ch.name, "description": ch.description,
                                 "emission_lambda": float(ch.emission_lambda)} for ch in plane.optical_channel]
    entry["device_metadata_key"] = device_key
    return entry


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _trace_metadata(config: Any) -> dict[str, dict[str, str]]:
    """``RoiResponses`` entries of the three kinds, named as the writer names them (primary: RoiResponseSeries)."""
    from nwb_extract.io.layout import PRIMARY_SERIES_NAME, SERIES_NAMES

    primary = primary_trace_kind(config.trace_output_option)
    return {kind: {"name": PRIMARY_SERIES_NAME if kind == primary else SERIES_NAMES[kind],
                   "description": f"EXTRACT traces, kind {kind!r}", "unit": "n.a."} for kind in TRACE_KINDS}


def _timing(times: np.ndarray, extractor: NwbExtractSegmentationExtractor) -> dict[str, Any]:
    """Rate and starting time when the (possibly aligned) timestamps are regular at the sampling rate, else the
    timestamps themselves."""
    rate = extractor.get_sampling_frequency()
    times = np.asarray(times, dtype=np.float64)
    if times.size > 1 and np.allclose(np.diff(times), 1.0 / rate, rtol=1e-9, atol=0.0):
        return {"rate": rate, "starting_time": float(times[0])}
    if times.size == 1:
        return {"rate": rate, "starting_time": float(times[0])}
    return {"timestamps": times}


def _reference_series(nwbfile: Any, plane: Any, stored_frame_shape: tuple[int, ...]) -> Any:
    """The one imaging series of ``nwbfile`` on ``plane`` whose stored frames match the masks, else None."""
    from nwb_extract.io.source import find_imaging_series

    matches = [series for series in find_imaging_series(nwbfile).values()
               if series.imaging_plane is plane and tuple(getattr(series.data, "shape", ())[1:]) ==
               tuple(stored_frame_shape)]
    return matches[0] if len(matches) == 1 else None


def register() -> None:
    """List the plugin in roiextractors and neuroconv (explicit and idempotent; nothing is registered on import).

    roiextractors: ``NwbExtractSegmentationExtractor`` in ``segmentation_extractor_full_list`` /
    ``segmentation_extractor_dict`` and ``NwbSeriesImagingExtractor`` in ``imaging_extractor_full_list`` /
    ``imaging_extractor_dict``. neuroconv: :class:`NwbExtractSegmentationInterface` in
    ``neuroconv.datainterfaces.interface_list``, ``interfaces_by_category["segmentation"]["NwbExtract"]``, and as
    an attribute of ``neuroconv.datainterfaces`` (YAML conversion specs name it ``NwbExtractSegmentationInterface``).
    """
    import neuroconv.datainterfaces as datainterfaces
    import roiextractors.extractorlist as extractorlist

    for full_list, by_name, cls in (
        (extractorlist.segmentation_extractor_full_list, extractorlist.segmentation_extractor_dict,
         NwbExtractSegmentationExtractor),
        (extractorlist.imaging_extractor_full_list, extractorlist.imaging_extractor_dict, NwbSeriesImagingExtractor),
    ):
        if cls not in full_list:
            full_list.append(cls)
        by_name[cls.extractor_name] = cls
    if NwbExtractSegmentationInterface not in datainterfaces.interface_list:
        datainterfaces.interface_list.append(NwbExtractSegmentationInterface)
    datainterfaces.interfaces_by_category["segmentation"][REGISTRY_NAME] = NwbExtractSegmentationInterface
    setattr(datainterfaces, NwbExtractSegmentationInterface.__name__, NwbExtractSegmentationInterface)
