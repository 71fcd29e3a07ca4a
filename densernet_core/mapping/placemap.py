"""A map of places: a folder a user can copy to a robot.

    manifest.json     format version, model config, checkpoint sha256, descriptor dim, places, frame, ...
    descriptors.npy   N x D float16 (default) or float32 (no pickle); searched exactly
    places.csv        id,image,x,y,z,qx,qy,qz,qw,timestamp,source
    index.faiss       compact (and hnsw/ivfpq) maps only: the FAISS index that proposes a shortlist
    coarse.npy        compact (and hnsw/ivfpq) maps only: the D x d projection that index works in (its
                      provenance in manifest.json's `projection`)
    refine_pq.faiss   compact maps of >= REFINE_MIN_PLACES places: the product quantiser of the full
    refine_codes.npy  descriptors and their N x M uint8 codes, which rank the inverted file's shortlist
    points*.npy/json  maps built with a camera only: triangulated 3-D points for metric localization
                      (mapping/points.py); without them the map is retrieval-only
    observation.json  how likely a frame shows a mapped place against no mapped place, fitted from the
                      map's own descriptors (localization/observation.py); maps made before it get one
                      fitted when loaded (`densernet-map calibrate` stores it)

Format 1 maps (float32, a FAISS index for every type) still load: a flat map's index.faiss is
ignored (the exact search is derived from the descriptors), an approximate one is used as is.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..datasets import GeoImages, PathColumn, StringColumn, frame_mismatch, local_origin
from ..camera import Camera
from ..config import heads_note
from ..frames import Extrinsic, extrinsic_from_mapping
from ..model.checkpoint import is_trained
from ..geometry import compose_poses
from ..images import read_image
from ..distributed import DistContext
from ..local_features import DEFAULT_FEATURES, FEATURE_TYPES, LocalFeatures, extract_features
from ..localization.observation import (OBSERVATION_FILE, ObservationConfig, ObservationError, ObservationModel,
                                        fit_observation_model)
from .extraction import ExtractionOptions, describe_images
from .grids import GRID_CHOICES, DenseGrids, GridError, build_grids, remove_grids, wanted as wanted_grids
from .index import (INDEX_TYPES, SHORTLIST, ExactIndex, Projection, RefineCodes, RowPrefetch, ShortlistIndex,
                    build_index, load_coarse, read_rows, resolve_index_type, save_index)
from .points import POINTS_META, FILES as POINT_FILES, MapPoints, TriangulationConfig, build_points

LOG = logging.getLogger("densernet")
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST, DESCRIPTORS, INDEX, PLACES, PARTIAL = "manifest.json", "descriptors.npy", "index.faiss", "places.csv", ".partial"
COARSE = "coarse.npy"
REFINE_FILES = ("refine_pq.faiss", "refine_codes.npy")  # a compact index's product quantiser and codes
DESCRIPTORS_BEING_WRITTEN = "descriptors.npy.tmp"  # renamed to descriptors.npy when the map is saved
PLACE_FIELDS = ["id", "image", "x", "y", "z", "qx", "qy", "qz", "qw", "timestamp", "source"]
PLACE_NUMBERS = (0, 2, 3, 4, 5, 6, 7, 8, 9)  # places.csv columns: id, x y z, qx qy qz qw, timestamp
PLACE_TEXT = (1, 10)  # image, source
DTYPES = ("float16", "float32")
COPY_ROWS = 16384  # descriptors copied at a time when a map's descriptors are rewritten
TIMING_QUERIES = 20  # searches `info` times to report the expected query time
BACKGROUND_PLACES = 512  # fixed random places against which a query's similarity to "anywhere" is measured
MAD_TO_STD = 1.4826  # median absolute deviation -> standard deviation of a normal distribution


class MapError(ValueError):
    """A map folder is missing, corrupt, or does not belong to the model in use."""


@dataclass
class Manifest:
    format_version: int
    model_config: dict
    checkpoint_sha256: str
    checkpoint: str
    descriptor_dim: int
    num_places: int
    frame_id: str
    created: str
    index_type: str  # the search built: flat (exact), compact, or hnsw/ivfpq (maps made before compact)
    dtype: str
    has_orientation: bool = True  # False: the route gave positions only (orientations are placeholders)
    # base -> camera (frames.Extrinsic.to_dict): the places are base poses; None (maps made before): the
    # places are whatever the route gave, camera poses for a map built with a camera
    extrinsic: dict | None = None
    index_request: str = ""  # what was asked for (auto: chosen by size, again at every `add`); "": index_type
    projection: dict | None = None  # a compact index's Projection (provenance, when to refit)
    utm_zone: str = ""  # the places came as lat/lon, projected in this UTM zone ('32N'); later lat/lon too
    # places in UTM metres: the point [x, y, z] of their frame where the node's map frame has its origin
    # (datasets.local_origin); None: the places' frame is the map frame
    map_origin: list[float] | None = None

    def requested_index(self) -> str:
        return self.index_request or self.index_type


def read_manifest(folder: str | Path) -> Manifest:
    """A map's manifest alone (what a traverse to add or ground truth needs of it, without its descriptors)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise MapError(f"map folder not found: {folder}")
    if not path.is_file():
        raise MapError(f"map {folder} is incomplete: {MANIFEST} missing")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise MapError(f"{path}: corrupt manifest ({exc})") from exc


def camera_poses(places: GeoImages, extrinsic: Extrinsic | None, ids: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Camera poses of (some of) the places: base poses times the extrinsic (the poses themselves without one)."""
    ids = np.arange(len(places)) if ids is None else np.asarray(ids)
    pos, ori = places.positions[ids], places.orientations[ids]
    return (pos, ori) if extrinsic is None else compose_poses(pos, ori, extrinsic.transform)


def background_rows(n: int) -> np.ndarray:
    """The fixed sample of places a query's similarity to "anywhere" is measured against."""
    return np.sort(np.random.default_rng(0).choice(n, min(n, BACKGROUND_PLACES), replace=False))


class PlaceMap:
    def __init__(self, manifest: Manifest, descriptors: np.ndarray, places: GeoImages,
                 index: ExactIndex | ShortlistIndex | None = None, points: MapPoints | None = None,
                 observation: ObservationModel | None = None, grids: DenseGrids | None = None) -> None:
        self.manifest = manifest
        self.points = points
        self.grids = grids  # the places' dense grids for the re-rank (mapping/grids.py), or None
        self.descriptors = descriptors  # as stored (float16 by default); a memory map for approximate maps
        self.places = places
        if index is None:
            manifest.index_type = resolve_index_type(manifest.requested_index(), len(places))
            index = build_index(descriptors, manifest.index_type)
        self.index = index
        manifest.projection = (asdict(index.provenance) if isinstance(index, ShortlistIndex)
                               and index.provenance is not None else None)
        # one open descriptor file per map: the shortlist index reads the same rows
        shared = isinstance(index, ShortlistIndex) and index.ref is descriptors
        self._prefetch = index.prefetch if shared else RowPrefetch.of(descriptors)
        self._background = read_rows(descriptors, background_rows(len(places)), self._prefetch).astype(np.float32)
        self.observation = observation
        self.observation_error = ""  # why there is no observation model, when there is none
        if manifest.map_origin is None:  # new maps, and maps made before the origin was recorded
            origin = local_origin(places.positions, manifest.utm_zone)
            manifest.map_origin = None if origin is None else [float(v) for v in origin]
        self.recentred = False

    @property
    def origin(self) -> np.ndarray | None:
        """Where a map frame local to the places has its origin, in the places' frame (UTM maps), or None."""
        return None if self.manifest.map_origin is None else np.asarray(self.manifest.map_origin, float)

    def recentre(self) -> np.ndarray | None:
        """Move the places and 3-D points, in memory, into the map frame local to them (their positions less
        `origin`): what the node publishes and takes in. Returns the origin (None: nothing to move). A map so
        moved is not saved: its files keep the places' own frame."""
        origin = self.origin
        if origin is None or self.recentred:
            return origin
        self.places.positions = self.places.positions - origin
        if self.points is not None:
            self.points.xyz = self.points.xyz - origin
        self.recentred = True
        return origin

    @property
    def extrinsic(self) -> Extrinsic | None:
        """base -> camera of the robot that made the map (its places are base poses), or None."""
        e = self.manifest.extrinsic
        return None if e is None else extrinsic_from_mapping(e, "manifest.json extrinsic")

    def camera_poses(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The mapped camera poses (places * extrinsic): what the 3-D points were triangulated from."""
        return camera_poses(self.places, self.extrinsic, ids)

    def fit_observation(self, config: ObservationConfig = ObservationConfig()) -> ObservationModel | None:
        """Fit the observation model from the map's own descriptors (None, with the reason in
        `observation_error`, when the map is too small or its descriptor says nothing about place)."""
        try:
            self.observation = fit_observation_model(self.descriptors, self.places.positions,
                                                     background_rows(len(self.places)), config)
            self.observation_error = ""
        except ObservationError as exc:
            self.observation, self.observation_error = None, str(exc)
            LOG.warning("no observation model: %s", exc)
        return self.observation

    def __len__(self) -> int:
        return len(self.places)

    # ---- io -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        if self.recentred:
            raise MapError("this map's places were moved to its local frame in memory (recentre); saving them "
                           "would move the map's files off their frame")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in (INDEX, COARSE, *REFINE_FILES, POINTS_META, *POINT_FILES.values(), OBSERVATION_FILE):  # written anew
            (folder / stale).unlink(missing_ok=True)
        if self.points is not None:
            self.points.save(folder)
        if self.observation is not None:
            self.observation.save(folder)
        write_descriptors(folder / DESCRIPTORS, self.descriptors, self.manifest.dtype)
        save_index(self.index, folder, INDEX, COARSE, REFINE_FILES)
        self.manifest.format_version = FORMAT_VERSION
        write_places(folder / PLACES, folder, self.places)
        (folder / MANIFEST).write_text(json.dumps(asdict(self.manifest), indent=2))  # last: marks the map complete
        return folder

    @classmethod
    def load(cls, folder: str | Path, observation: bool = True, rebuild_index: str | None = None,
             grids: bool = True) -> "PlaceMap":
        """`observation` False: the stored observation model is neither read nor fitted (calibrate replaces it).
        `rebuild_index`: the stored search is not read (it may be damaged); this kind ("": the one the map
        asked for) is built from the descriptors instead (`reindex`). `grids` False: the dense grids are not
        read (`densernet-map grids` replaces them)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MapError(f"map folder not found: {folder}")
        for name in (MANIFEST, DESCRIPTORS, PLACES):
            if not (folder / name).is_file():
                raise MapError(f"map {folder} is incomplete: {name} missing")
        manifest = read_manifest(folder)
        if manifest.format_version not in READABLE_VERSIONS:
            raise MapError(f"{folder}: map format {manifest.format_version}, this densernet reads {READABLE_VERSIONS}")
        built = tuple(k for k in INDEX_TYPES if k != "auto")  # a search that exists; "auto" is only asked for
        for name, value, known in (("index type", manifest.index_type, built),
                                   ("index request", manifest.index_request or manifest.index_type, INDEX_TYPES)):
            if value not in known:
                raise MapError(f"{folder / MANIFEST}: {name} {value!r} unknown; expected one of {known}")
        origin = manifest.map_origin
        if origin is not None and not (isinstance(origin, list) and len(origin) == 3
                                       and all(isinstance(v, (int, float)) and np.isfinite(v) for v in origin)):
            raise MapError(f"{folder / MANIFEST}: map_origin {origin!r} is not [x, y, z] in the places' frame "
                           "(delete the key: it is the first place's x, y in whole metres again)")
        if rebuild_index is not None:
            manifest.index_request = rebuild_index or manifest.requested_index()
            try:
                manifest.index_type = resolve_index_type(manifest.index_request, manifest.num_places)
            except ValueError as exc:
                raise MapError(str(exc)) from exc
        approximate = manifest.index_type != "flat"
        try:  # an approximate map may be larger than memory: its descriptors are read on demand
            desc = np.load(folder / DESCRIPTORS, allow_pickle=False, mmap_mode="r" if approximate else None)
        except (ValueError, OSError, EOFError) as exc:
            raise MapError(f"{folder / DESCRIPTORS}: corrupt descriptors ({exc})") from exc
        if desc.ndim != 2 or desc.shape != (manifest.num_places, manifest.descriptor_dim) or desc.dtype.name not in DTYPES:
            raise MapError(f"{folder / DESCRIPTORS}: shape {desc.shape} {desc.dtype}, manifest says "
                           f"({manifest.num_places}, {manifest.descriptor_dim}) in one of {DTYPES}")
        places = read_places(folder / PLACES, folder, manifest.frame_id, manifest.has_orientation)
        places.utm_zone = manifest.utm_zone
        if len(places) != manifest.num_places:
            raise MapError(f"{folder / PLACES}: {len(places)} places, manifest says {manifest.num_places}")
        try:
            points = MapPoints.load(folder)
            model = ObservationModel.load(folder) if observation else None
        except ValueError as exc:
            raise MapError(f"{exc}; `densernet-map calibrate {folder}` fits it anew" if OBSERVATION_FILE in str(exc)
                           else str(exc)) from exc
        try:
            dense = DenseGrids.load(folder, manifest.num_places, manifest.checkpoint_sha256) if grids else None
        except GridError as exc:
            raise MapError(str(exc)) from exc
        stored = approximate and rebuild_index is None
        pmap = cls(manifest, desc, places, _load_shortlist(folder, manifest, desc) if stored else None, points, model,
                   dense)
        if observation and model is None:
            t0 = time.perf_counter()
            if pmap.fit_observation() is not None:
                LOG.warning("map %s predates the observation model: fitted one now (%.1f s); `densernet-map calibrate "
                            "%s` stores it", folder, time.perf_counter() - t0, folder)
        return pmap

    # ---- use ------------------------------------------------------------------------------------
    def check_model(self, descriptor_dim: int, checkpoint_sha256: str | None = None) -> None:
        """Refuse to compare descriptors from another model: dimension and checkpoint hash must match."""
        if descriptor_dim != self.manifest.descriptor_dim:
            raise MapError(f"descriptor size mismatch: the model gives {descriptor_dim}-D descriptors, the map holds "
                           f"{self.manifest.descriptor_dim}-D (built with checkpoint {self.manifest.checkpoint})")
        if checkpoint_sha256 is not None and checkpoint_sha256 != self.manifest.checkpoint_sha256:
            raise MapError(f"checkpoint mismatch: the map was built with checkpoint sha256 "
                           f"{self.manifest.checkpoint_sha256[:12]}… ({self.manifest.checkpoint}), the model in use "
                           f"has {checkpoint_sha256[:12]}…; rebuild the map or use that checkpoint")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query: exact inner products with the stored descriptors."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.manifest.descriptor_dim:
            raise MapError(f"query descriptors have dimension {q.shape[1]}, the map {self.manifest.descriptor_dim}")
        return self.index.search(q, min(k, len(self)))

    def similarities(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact similarities of one query to the given places (read from the stored descriptors)."""
        ids = np.asarray(ids, dtype=np.int64)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.manifest.descriptor_dim:
            raise MapError(f"query descriptor has dimension {q.shape[0]}, the map {self.manifest.descriptor_dim}")
        order = np.argsort(ids, kind="stable")  # sorted reads from a memory-mapped file
        out = np.empty(len(ids), np.float32)
        out[order] = read_rows(self.descriptors, ids[order], self._prefetch).astype(np.float32) @ q
        return out

    def background_scores(self, queries: np.ndarray) -> np.ndarray:
        """Per query, its similarities to the map's fixed sample of places (Q x min(N, 512))."""
        return np.atleast_2d(queries).astype(np.float32) @ self._background.T

    def bytes_per_place(self, folder: str | Path) -> float:
        """What the map costs on disk per place (descriptors, index and places together)."""
        total = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
        return total / max(1, len(self))

    def info(self, folder: str | Path | None = None) -> str:
        """What is in the map; with its `folder`, also what its search costs (bytes per place, query time)."""
        m = self.manifest
        pos = self.places.positions
        extent = pos.max(0) - pos.min(0)
        search = "exact" if m.index_type == "flat" else f"{m.index_type} shortlist + exact re-ranking"
        lines = [f"places: {m.num_places}   descriptor: {m.descriptor_dim}-D {m.dtype} "
                 f"({m.descriptor_dim * np.dtype(m.dtype).itemsize} B/place)   search: {search}"
                 + (f" (chosen by size: {m.requested_index()})" if m.requested_index() == "auto" else "")]
        if folder is not None:
            lines.append(self._search_cost(folder))
        if isinstance(self.index, ShortlistIndex) and self.index.provenance is not None:
            lines.append(self.index.provenance.describe())
        return "\n".join(lines + [
            f"frame: {m.frame_id}   extent: {extent[0]:.1f} x {extent[1]:.1f} x {extent[2]:.1f}"
            + (f"   positions: UTM zone {m.utm_zone} (from lat/lon; later lat/lon are projected in it)" if m.utm_zone
               else ""),
            *([] if self.origin is None else [
                f"local map frame: origin at x {self.origin[0]:.0f}, y {self.origin[1]:.0f} of the places' UTM metres "
                "(the node publishes relative to it, with a utm frame below its map frame)"]),
            f"model: preset {m.model_config.get('preset')}, image {m.model_config.get('image_size')}, "
            f"weights {m.model_config.get('weights')}"
            + heads_note(m.model_config.get("heads", 1)),
            f"checkpoint: {m.checkpoint} (sha256 {m.checkpoint_sha256[:16]}…)",
            f"created: {m.created}   sources: {sorted(set(self.places.source.split(';')))}",
            self._points_info(),
            self._grids_info(),
            f"poses: of {self.extrinsic.base_frame}, camera {self.extrinsic.describe()}" if self.extrinsic else
            "poses: as given by the route (no extrinsic: a map with 3-D points holds camera poses)",
            self.observation.describe() if self.observation is not None else
            f"observation model: none ({self.observation_error})",
        ])

    def query_time_ms(self, queries: int = TIMING_QUERIES) -> float:
        """Median time of one search for the top 10 here, now (stored places as queries, after one warm-up)."""
        rows = np.sort(np.random.default_rng(1).choice(len(self), min(len(self), queries), replace=False))
        q = read_rows(self.descriptors, rows, self._prefetch).astype(np.float32)
        self.search(q[:1], 10)
        times = []
        for row in q:
            t0 = time.perf_counter()
            self.search(row[None], 10)
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times))

    def _search_cost(self, folder: str | Path) -> str:
        n = max(1, len(self))
        ram = self.index.memory_bytes() / n
        reads = ("" if isinstance(self.index, ExactIndex)
                 else f"; {self.index.shortlist} stored descriptors read from disk per query")
        return (f"bytes per place: {ram:.0f} in RAM for search, {self.bytes_per_place(folder):.0f} on disk{reads}; "
                f"expected query time: {self.query_time_ms():.2f} ms (p50 of {min(n, TIMING_QUERIES)} searches "
                f"timed now)")

    def _grids_info(self) -> str:
        if self.grids is None:
            return ("dense grids: none (the global ranking is used as is; `densernet-map grids` adds them to re-rank "
                    "the top candidates by the dense map)")
        g = self.grids.meta
        return (f"dense grids: {g.height}x{g.width} cells of {g.channels} ({g.dtype}, pool {g.pool}), "
                f"{g.bytes_per_place() / 1024:.0f} KB per place on disk, read per query for the candidates re-ranked")

    def _points_info(self) -> str:
        if self.points is None:
            return "3-D points: none (built without a camera: retrieval-only, no metric pose)"
        per = self.points.per_place(len(self))
        c = self.points.camera
        return (f"3-D points: {len(self.points.xyz)} ({self.points.kind} features), observations per place: "
                f"mean {per.mean():.0f}, min {per.min()}, max {per.max()}; {int((per == 0).sum())} places without; "
                f"camera {c.width}x{c.height} fx {c.fx:.1f} fy {c.fy:.1f} cx {c.cx:.1f} cy {c.cy:.1f}")


def write_places(path: Path, folder: Path, places: GeoImages) -> None:
    """places.csv: images inside the map folder travel with it (relative), others keep an absolute path, both
    resolved as Path.resolve() does. A directory is resolved once for all its images (a Path and a resolve()
    per place took 145 s at 10^6 places on an AVX2 EPYC, the CPU shared; now 17 s), a file that is itself a
    link on its own."""
    root = os.path.realpath(folder) + os.sep
    resolved: dict[str, str] = {}
    positions, orientations = places.positions.tolist(), places.orientations.tolist()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PLACE_FIELDS)
        strings = places.images.strings() if isinstance(places.images, StringColumn) else map(str, places.images)
        for i, image in enumerate(strings):
            parent, name = os.path.split(image)
            if parent not in resolved:
                resolved[parent] = os.path.realpath(parent or ".")
            img = os.path.join(resolved[parent], name)
            if not name or name in (".", "..") or os.path.islink(img):
                img = os.path.realpath(image)
            w.writerow([i, img[len(root):] if img.startswith(root) else img, *positions[i], *orientations[i],
                        f"{places.timestamps[i]:.9f}", places.place_sources[i]])


def read_places(path: Path, folder: Path, frame_id: str, has_orientation: bool = True) -> GeoImages:
    """The map's places; their image paths held as one string array (a map may hold 10^6). Parsed by numpy's
    C reader, column by column: row by row (a dict, seven float() calls and a Path per row) this took about
    20 of the 30 s a 1M-place node needed to start on an AVX2 EPYC (docs/BENCHMARKS.md); now about 5 s."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if header != PLACE_FIELDS:
        raise MapError(f"{path}: header {header}, expected {PLACE_FIELDS}")
    read = dict(delimiter=",", skiprows=1, quotechar='"', comments=None, ndmin=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a map of no places: "input contained no data"
            numbers = np.loadtxt(path, usecols=PLACE_NUMBERS, dtype=np.float64, **read).reshape(-1, len(PLACE_NUMBERS))
            text = np.loadtxt(path, usecols=PLACE_TEXT, dtype=np.dtypes.StringDType(), **read).reshape(-1, 2)
    except ValueError:
        _raise_bad_row(path)
    ids = numbers[:, 0]
    out_of_order = np.flatnonzero(ids != np.arange(len(ids)))
    if len(out_of_order):
        k = int(out_of_order[0])
        raise MapError(f"{path}:{k + 2}: bad row (id {ids[k]:g} out of order)")
    images = _place_paths(text[:, 0], folder)
    names, first, inverse = np.unique(text[:, 1], return_index=True, return_inverse=True)
    interned = np.array([str(v) for v in names], dtype=object)  # one string per traverse, shared by its places
    sources = interned[inverse.reshape(-1)].tolist()
    source = ";".join(str(names[k]) for k in np.argsort(first))
    columns = [np.ascontiguousarray(numbers[:, a:b]) for a, b in ((1, 4), (4, 8), (8, 9))]  # not views of it all
    return GeoImages(PathColumn(images), columns[0], columns[1], columns[2].reshape(-1), source, has_orientation,
                     frame_id, place_sources=sources)


def _place_paths(images: np.ndarray, folder: Path) -> np.ndarray:
    """str(Path(p)), or str(folder / p) for a relative p, without a Path per place for the paths a map
    writes (absolute, or relative to its folder, both already normal)."""
    strings = np.strings
    base = str(folder)
    relative = ~strings.startswith(images, "/")
    out = images.copy()
    out[relative] = strings.add("" if base == "." else base.rstrip("/") + "/", images[relative])
    odd = (strings.find(images, "//") >= 0) | (strings.find(images, "/./") >= 0) | strings.startswith(images, "./") \
        | strings.endswith(images, "/") | strings.endswith(images, "/.") | (images == "") | (images == ".")
    for k in np.flatnonzero(odd):
        img = Path(str(images[k]))
        out[k] = str(img if img.is_absolute() else folder / img)
    return out


def _raise_bad_row(path: Path) -> None:
    """The first row numpy could not read, named by its line (found row by row, on the error path only)."""
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if line == 1:
                continue
            try:
                if len(row) != len(PLACE_FIELDS):
                    raise ValueError(f"{len(row)} fields, expected {len(PLACE_FIELDS)}")
                int(row[0])
                [float(v) for v in row[2:10]]
            except ValueError as exc:
                raise MapError(f"{path}:{line}: bad row ({exc})") from exc
    raise MapError(f"{path}: cannot be read as the map's places")


def build_map(model, checkpoint: str | Path, checkpoint_sha256: str, data: GeoImages, out: str | Path,
              index_type: str = "auto", dtype: str = "float16", progress: bool = True, camera: Camera | None = None,
              features: str = DEFAULT_FEATURES, triangulation: TriangulationConfig = TriangulationConfig(),
              extraction: ExtractionOptions = ExtractionOptions(), ctx: DistContext = DistContext(),
              observation: ObservationConfig = ObservationConfig(), extrinsic: Extrinsic | None = None,
              grids: str = "auto") -> PlaceMap | None:
    """Descriptors of every mapped image, indexed, with the observation model fitted from them; with
    `camera` (the mapped images' intrinsics) also their local features, triangulated into 3-D points
    between neighbouring places. `extrinsic` (base -> camera): the route's poses are the robot base's,
    the points are triangulated from the camera poses they imply (frames.py). `grids`: keep the places'
    dense grids for the re-rank (mapping/grids.py; auto: a trained checkpoint's maps of up to AUTO_MAX_PLACES).

    Under torchrun (`ctx`) each rank describes its share of the images and rank 0 writes the map
    (the other ranks return None)."""
    if index_type not in INDEX_TYPES:
        raise MapError(f"index type {index_type!r} unknown; choose one of {INDEX_TYPES}")
    if dtype not in DTYPES:
        raise MapError(f"dtype {dtype!r} unknown; choose one of {DTYPES}")
    if len(data) == 0:
        raise MapError("no images to build a map from")
    if grids not in GRID_CHOICES:
        raise MapError(f"grids {grids!r} unknown; choose one of {GRID_CHOICES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if camera is not None:
        camera = _camera_for_images(camera, data, features)
    described = describe_images(model, data.images, out / PARTIAL, checkpoint_sha256,
                                features if camera is not None else None, extraction, ctx, progress)
    if described is None:  # another rank than 0: its share is with rank 0, which writes the map
        _finish_shard(out / PARTIAL, ctx)
        return None
    desc, feats = described
    points = None if camera is None else build_points(camera, *camera_poses(data, extrinsic), feats, triangulation,
                                                      progress)
    manifest = Manifest(FORMAT_VERSION, model.config.to_dict(), checkpoint_sha256, str(checkpoint),
                        int(desc.shape[1]), len(data), data.frame_id, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        index_type, dtype, data.has_orientation,  # the search is chosen by PlaceMap
                        None if extrinsic is None else extrinsic.to_dict(), index_type, utm_zone=data.utm_zone)
    pmap = PlaceMap(manifest, desc.astype(dtype), data, points=points)
    pmap.fit_observation(observation)
    remove_grids(out, partial=False)  # a map built anew in an old folder: its grids were another map's
    pmap.save(out)
    build, why = wanted_grids(grids, len(data), grids == "auto" and Path(checkpoint).is_file() and is_trained(checkpoint))
    LOG.info("dense grids for the re-rank: %s", why)
    if build:
        pmap.grids = build_grids(model, data.images, out, checkpoint_sha256, progress=progress)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    ctx.barrier()  # the other ranks may now drop their partial results
    return pmap


def _finish_shard(work: Path, ctx: DistContext) -> None:
    """Wait until rank 0 has written the map; then a rank's own copy of its chunks (a folder rank 0
    does not share) is no longer needed."""
    ctx.barrier()
    shutil.rmtree(work, ignore_errors=True)


def add_to_map(folder: str | Path, model, checkpoint_sha256: str, data: GeoImages, progress: bool = True,
               extraction: ExtractionOptions = ExtractionOptions()) -> PlaceMap:
    """Append a traverse to an existing map (descriptors added to the index, nothing re-extracted)."""
    folder = Path(folder)
    pmap = PlaceMap.load(folder)
    pmap.check_model(model.descriptor_dim, checkpoint_sha256)
    if data.frame_id != pmap.manifest.frame_id and data.frame_id != "map":
        raise MapError(f"traverse frame {data.frame_id!r} differs from the map frame {pmap.manifest.frame_id!r}")
    zone = pmap.manifest.utm_zone
    problem = frame_mismatch(zone, pmap.places.positions, data.utm_zone, data.positions, f"traverse {data.source}")
    if problem:
        raise MapError(problem)
    if data.utm_zone and not zone:  # the map's places are UTM-like: a map made from lat/lon before maps said so
        LOG.warning("the map does not record a UTM zone (made before maps recorded it); its places look like UTM, "
                    "so the traverse's lat/lon, projected in zone %s, are taken to be in its frame, and the zone "
                    "is recorded now", data.utm_zone)
        pmap.manifest.utm_zone = data.utm_zone
    features = pmap.points.kind if pmap.points is not None else None
    new, new_feats = describe_images(model, data.images, folder / PARTIAL, checkpoint_sha256, features, extraction,
                                     progress=progress)
    new = new.astype(pmap.manifest.dtype)
    merged = GeoImages(pmap.places.images + data.images, np.vstack([pmap.places.positions, data.positions]),
                       np.vstack([pmap.places.orientations, data.orientations]),
                       np.concatenate([pmap.places.timestamps, data.timestamps]),
                       ";".join(dict.fromkeys(pmap.places.source.split(";") + [data.source])),
                       pmap.places.has_orientation and data.has_orientation, pmap.manifest.frame_id,
                       place_sources=pmap.places.place_sources + data.place_sources, utm_zone=pmap.manifest.utm_zone)
    pmap.manifest.has_orientation = merged.has_orientation
    descriptors = _appended(folder, pmap.descriptors, new)
    pmap.manifest.num_places = len(merged)
    points = pmap.points
    if points is not None:
        points = _extend_points(points, model, merged, pmap.extrinsic, len(pmap.places), new_feats, progress)
    out = PlaceMap(pmap.manifest, descriptors, merged, _extended_index(folder, pmap, new, descriptors), points)
    out.fit_observation(_observation_config(pmap.observation))  # refitted on the whole map, as first fitted
    if pmap.grids is not None:  # written before the map: a map whose grids fall short of it does not load
        out.grids = build_grids(model, data.images, folder, checkpoint_sha256, pmap.grids.meta.pool, pmap.grids,
                                progress)
    out.save(folder)
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)
    return out


def _appended(folder: Path, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The map's descriptors with the new ones after them: in memory for a map searched exactly, else
    written a block at a time to a file beside the map's (a large map's are never all in memory)."""
    if not isinstance(old, np.memmap):
        return np.vstack([old, new])
    out = np.lib.format.open_memmap(folder / DESCRIPTORS_BEING_WRITTEN, mode="w+", dtype=old.dtype,
                                    shape=(len(old) + len(new), old.shape[1]))
    _copy_rows(old, out)
    out[len(old):] = new
    out.flush()
    return out


def _extended_index(folder: Path, pmap: PlaceMap, new: np.ndarray, descriptors: np.ndarray
                    ) -> ShortlistIndex | None:
    """A compact index with the new places added under the projection it has, while the map stays below
    the size its projection is refitted at; None: the search is built anew for the grown map (an exact
    one, a refit, a map outgrowing exact search under `auto`, or an index made before compact)."""
    m = pmap.manifest
    grown = len(pmap) + len(new)
    index = pmap.index
    if resolve_index_type(m.requested_index(), grown) != "compact" or not isinstance(index, ShortlistIndex) \
            or index.provenance is None:
        return None
    if grown >= index.provenance.refit_at():
        LOG.info("%d places: the compact index's projection (%s, fitted on %d) is fitted anew", grown,
                 index.provenance.method, index.provenance.fitted_places)
        return None
    coarse = load_coarse(folder / INDEX)  # in memory: the mapped copy is read-only
    refine = None if index.refine is None else RefineCodes(index.refine.pq, index.refine.codes)  # codes grow apart
    extended = ShortlistIndex(coarse, index.projection, descriptors, index.shortlist, index.provenance, refine)
    extended.add(new, descriptors)
    LOG.info("%d places added to the compact index under its projection (fitted on %d places; refitted at %d)",
             len(new), index.provenance.fitted_places, index.provenance.refit_at())
    return extended


def reindex_map(folder: str | Path, index_type: str | None = None) -> PlaceMap:
    """Build a map's search anew from its stored descriptors (another index type; a compact projection
    refitted on the map as it is now); nothing is described again."""
    pmap = PlaceMap.load(folder, rebuild_index=index_type or "")
    pmap.save(folder)
    return pmap


def write_descriptors(path: Path, descriptors: np.ndarray, dtype: str) -> None:
    """Store N x D descriptors as .npy (no pickle). Descriptors being written beside the map (`add` to a
    large one) are renamed into place; the map's own, memory-mapped, are left as they are; others are
    written a block at a time, so a memory-mapped map's are never all in memory."""
    source = Path(descriptors.filename).resolve() if isinstance(descriptors, np.memmap) else None
    if source is not None and descriptors.dtype == np.dtype(dtype):
        if source == path.resolve():
            return
        if source == (path.parent / DESCRIPTORS_BEING_WRITTEN).resolve():
            descriptors.flush()
            os.replace(source, path)
            return
    tmp = path.parent / DESCRIPTORS_BEING_WRITTEN
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=descriptors.shape)
    _copy_rows(descriptors, out)
    out.flush()
    del out
    os.replace(tmp, path)


def _copy_rows(src: np.ndarray, out: np.ndarray) -> None:
    """src into the first rows of out, a block at a time (a memory-mapped map's never all in memory)."""
    for s in range(0, len(src), COPY_ROWS):
        block = src[s:s + COPY_ROWS]
        out[s:s + len(block)] = block


def _observation_config(model: ObservationModel | None) -> ObservationConfig:
    """The fitting settings a map's model was made with (defaults for a map without one)."""
    if model is None:
        return ObservationConfig()
    return ObservationConfig(recognition_margin=model.recognition_margin, miss_rate=model.miss_rate)


def background_statistics(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of background similarities (PlaceMap.background_scores): their median and robust spread
    (MAD as a standard deviation), i.e. how similar a query looks to places it is not at. Similarities are
    compared in units of this spread, which differs tenfold between a raw VLAD and a whitened descriptor."""
    median = np.median(scores, axis=1)
    scale = MAD_TO_STD * np.median(np.abs(scores - median[:, None]), axis=1)
    return median, np.maximum(scale, 1e-6)


def calibrate_map(folder: str | Path, config: ObservationConfig = ObservationConfig()) -> PlaceMap:
    """Fit the map's observation model anew and store it (maps made before it, a damaged one, other settings)."""
    pmap = PlaceMap.load(folder, observation=False)
    if pmap.fit_observation(config) is None:
        raise MapError(f"map {folder}: {pmap.observation_error}")
    pmap.observation.save(folder)
    return pmap


def _camera_for_images(camera: Camera, data: GeoImages, features: str) -> Camera:
    """The intrinsics at the mapped images' own size (a camera file for another resolution is scaled)."""
    if features not in FEATURE_TYPES:
        raise MapError(f"local feature kind {features!r} unknown; choose one of {FEATURE_TYPES}")
    if not data.has_orientation:
        raise MapError("3-D points need the mapped camera poses, orientation included; this route has positions only")
    h, w = read_image(data.images[0]).shape[:2]
    if (w, h) != (camera.width, camera.height):
        LOG.info("camera intrinsics for %dx%d scaled to the mapped images' %dx%d", camera.width, camera.height, w, h)
        camera = camera.scaled(w, h)
    return camera


def _extend_points(points: MapPoints, model, places: GeoImages, extrinsic: Extrinsic | None, first_new: int,
                   new_feats: list[LocalFeatures], progress: bool) -> MapPoints:
    """Triangulate the appended places with each other and with their mapped neighbours (whose local
    features are extracted again: a map keeps only the features that became points)."""
    from .points import merged as merged_points, place_pairs

    new = set(range(first_new, len(places)))
    feats: dict[int, LocalFeatures] = {first_new + k: f for k, f in enumerate(new_feats)}
    old = sorted({i for pair in place_pairs(places.positions, points.config) if new & set(pair) for i in pair} - new)
    feats.update(zip(old, extract_features(model, [read_image(places.images[i]) for i in old], points.kind)))
    added = build_points(points.camera, *camera_poses(places, extrinsic), feats, points.config, progress,
                         only_with=new, first_id=len(points.xyz))
    return merged_points(points, added)


def _load_shortlist(folder: Path, manifest: Manifest, descriptors: np.ndarray) -> ShortlistIndex:
    """The coarse index of an approximate map (format 1: over the descriptors themselves); a compact one's
    lists memory-mapped from the file."""
    compact = manifest.index_type == "compact"
    provenance = None
    if compact:
        if manifest.projection is None:
            raise MapError(f"{folder / MANIFEST}: a compact map without its projection record; "
                           f"`densernet-map reindex {folder}` rebuilds it")
        try:
            provenance = Projection.from_dict(manifest.projection)
        except ValueError as exc:
            raise MapError(f"{folder / MANIFEST}: {exc}") from exc
    try:
        coarse = load_coarse(folder / INDEX, mmap=compact)
    except (FileNotFoundError, ValueError) as exc:
        raise MapError(f"map {folder}: {exc}") from exc
    projection = None
    if (folder / COARSE).is_file():
        try:
            projection = np.load(folder / COARSE, allow_pickle=False, mmap_mode="r" if compact else None)
        except (ValueError, OSError, EOFError) as exc:
            raise MapError(f"{folder / COARSE}: corrupt projection ({exc})") from exc
        if projection.ndim != 2 or projection.shape != (manifest.descriptor_dim, coarse.d):
            raise MapError(f"{folder / COARSE}: shape {projection.shape}, expected ({manifest.descriptor_dim}, {coarse.d})")
    elif coarse.d != manifest.descriptor_dim:
        raise MapError(f"map {folder}: {COARSE} missing for a {coarse.d}-D index over {manifest.descriptor_dim}-D descriptors")
    if coarse.ntotal != manifest.num_places:
        raise MapError(f"{folder / INDEX}: {coarse.ntotal} vectors, manifest says {manifest.num_places} places")
    if provenance is None:
        return ShortlistIndex(coarse, projection, descriptors, SHORTLIST)
    refine = None
    if provenance.refine != "none":
        try:
            refine = RefineCodes.load(folder, *REFINE_FILES, manifest.num_places, manifest.descriptor_dim)
        except ValueError as exc:
            raise MapError(f"map {folder}: {exc}; `densernet-map reindex {folder}` rebuilds the index") from exc
        if refine.name != provenance.refine:
            raise MapError(f"map {folder}: {REFINE_FILES[0]} is {refine.name}, manifest.json says {provenance.refine}")
    return ShortlistIndex(coarse, projection, descriptors, provenance.rerank, provenance, refine)
