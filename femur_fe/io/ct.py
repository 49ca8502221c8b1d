"""CT volumes: reading, writing, world transforms, unit checks and masks.

Frame and index conventions
---------------------------
A :class:`CTImage` holds ``array`` indexed ``[i, j, k]`` along the image axes (i fastest in the
file, as in ITK/NIfTI; note that ``SimpleITK.GetArrayFromImage`` returns ``[k, j, i]`` and this
module transposes it). Voxel *centres* sit at integer indices; voxel ``[i, j, k]`` covers the
index box ``[i - 0.5, i + 0.5] x ...``.

World coordinates are millimetres in the **LPS** patient frame (x to the patient's Left, y to
Posterior, z to Superior), exactly as SimpleITK/ITK and DICOM report them::

    world = origin + direction @ (spacing * index)        # affine[:3, :3] = direction @ diag(spacing)

NIfTI files store RAS (``nibabel``'s affine); ITK converts them to LPS on reading, so a NIfTI
affine ``A_ras`` and this affine relate by ``A_lps = diag(-1, -1, 1, 1) @ A_ras``. Meshes made from
these images by femur_fe are in the same LPS frame. A mesh exported in RAS (e.g. by older
3D Slicer versions) must be converted first: see :func:`lps_from_ras`.

Units
-----
``unit`` is one of ``"HU"`` (Hounsfield units), ``"mg/cm3"`` or ``"g/cm3"`` (calibrated
mineral-equivalent density). The API works in g/cm^3; mg/cm^3 is accepted at I/O only.
A declared unit whose value range contradicts it raises :class:`~femur_fe.errors.CTError`.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..diagnostics import warn
from ..errors import AmbiguousUnitError, CTError
from .nifti_raw import nonfinite_voxels

log = logging.getLogger(__name__)

UNITS = ("HU", "mg/cm3", "g/cm3")
_UNIT_ALIASES = {
    "hu": "HU", "hounsfield": "HU",
    "mg/cm3": "mg/cm3", "mg/cm^3": "mg/cm3", "mg/cc": "mg/cm3", "mg/ml": "mg/cm3", "mgcc": "mg/cm3",
    "g/cm3": "g/cm3", "g/cm^3": "g/cm3", "g/cc": "g/cm3", "g/ml": "g/cm3",
}
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".dcm")
_META_UNIT_KEY = "femur_fe_unit"

#: 4x4 matrix converting homogeneous RAS coordinates to LPS (and back: it is its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_from_ras(points) -> np.ndarray:
    """Convert (n, 3) points from the RAS frame to LPS (negate x and y); mm."""
    pts = np.array(points, dtype=np.float64, copy=True)
    pts[..., :2] *= -1.0
    return pts


def ras_from_lps(points) -> np.ndarray:
    """Convert (n, 3) points from the LPS frame to RAS (negate x and y); mm."""
    return lps_from_ras(points)


def normalise_unit(unit: str) -> str:
    """Return the canonical unit name (``"HU"``, ``"mg/cm3"``, ``"g/cm3"``) or raise CTError."""
    key = str(unit).strip().lower().replace(" ", "")
    if key in _UNIT_ALIASES:
        return _UNIT_ALIASES[key]
    raise CTError(f"unit must be one of {', '.join(UNITS)} (or 'auto' when reading), got {unit!r}")


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case suffix with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


# ---------------------------------------------------------------------------------------------
# unit checks
# ---------------------------------------------------------------------------------------------
def _finite_range(array: np.ndarray) -> tuple[float, float, int]:
    """(min, max, n_nan) of the finite values; raises when nothing is finite."""
    n_nan = int(np.count_nonzero(np.isnan(array))) if np.issubdtype(array.dtype, np.floating) else 0
    if n_nan:
        vmin, vmax = float(np.nanmin(array)), float(np.nanmax(array))
    else:
        vmin, vmax = float(array.min()), float(array.max())
    if not np.isfinite(vmin) or not np.isfinite(vmax):
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise CTError("the CT holds no finite value (all voxels NaN/inf); check the file")
        vmin, vmax = float(finite.min()), float(finite.max())
    return vmin, vmax, n_nan


def guess_unit(vmin: float, vmax: float) -> str | None:
    """Guess the unit from a value range; None when the range is ambiguous.

    * g/cm^3 when all values lie in [-2, 5] (no tissue is denser than 5 g/cm^3);
    * HU when the minimum is <= -900 (air at about -1000 HU; a calibrated K2HPO4/HA image
      puts air near -800 mg/cm^3 because typical slopes are about 0.8 mg/cm^3 per HU);
    * otherwise ambiguous (e.g. a masked or cropped image in mg/cm^3 or HU).
    """
    if vmin >= -2.0 and vmax <= 5.0:
        return "g/cm3"
    if vmin <= -900.0:
        return "HU"
    return None


def check_unit(vmin: float, vmax: float, unit: str, where: str = "CT") -> None:
    """Raise CTError when the value range [vmin, vmax] contradicts the declared ``unit``.

    Rules (each one a physical impossibility for a full CT in that unit):

    * HU: max < 50 (bone is > 200 HU; values like 0..3 are g/cm^3 or a mask) or min > 0
      (air, fat and water are <= 0 HU in any body CT);
    * mg/cm3: max < 50 (looks like g/cm^3 or a mask) or min < -900 (looks like HU: air);
    * g/cm3: max > 50 or min < -2 (looks like mg/cm^3 or HU).
    """
    hint = (" (pass check_unit=False, CLI `info --no-unit-check`, if you are sure, e.g. for a cropped or masked "
            "image)")
    rng = f"values range from {vmin:.4g} to {vmax:.4g}"
    if unit == "HU":
        if vmax < 50.0:
            raise CTError(f"{where}: declared HU but {rng}; max < 50 is not a CT of bone in HU. "
                          f"It looks like density in g/cm3 or a mask: pass unit='g/cm3' (CLI: --ct-unit g/cm3; a "
                          f"mask is --mask){hint}")
        if vmin > 0.0:
            raise CTError(f"{where}: declared HU but {rng}; a body CT in HU has air/fat below 0. "
                          f"It looks like a calibrated density (mg/cm3): pass unit='mg/cm3' (CLI: --ct-unit mg/cm3)"
                          f"{hint}")
    elif unit == "mg/cm3":
        if vmax < 50.0:
            raise CTError(f"{where}: declared mg/cm3 but {rng}; that looks like g/cm3 or a mask: "
                          f"pass unit='g/cm3' (CLI: --ct-unit g/cm3; a mask is --mask){hint}")
        if vmin < -900.0:
            raise CTError(f"{where}: declared mg/cm3 but {rng}; min < -900 looks like HU (air at -1000 HU): "
                          f"pass unit='HU' with a calibration (CLI: --ct-unit HU --calibration internal or "
                          f"--calibration PHANTOM.json){hint}")
    elif unit == "g/cm3":
        if vmax > 50.0 or vmin < -2.0:
            raise CTError(f"{where}: declared g/cm3 but {rng}; that looks like mg/cm3 or HU: "
                          f"pass unit='mg/cm3' or unit='HU' (CLI: --ct-unit mg/cm3, or --ct-unit HU with "
                          f"--calibration internal|PHANTOM.json){hint}")


# ---------------------------------------------------------------------------------------------
# the image type
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CTImage:
    """A CT volume with its index-to-world transform.

    Attributes
    ----------
    array : (ni, nj, nk) float32 or float64
        Voxel values indexed [i, j, k]. Integer input is stored as float32 (exact for
        |value| < 2**24); floating input keeps its precision.
    spacing : (3,) float64, mm
        Voxel size along i, j, k (positive).
    origin : (3,) float64, mm
        World (LPS) position of the centre of voxel [0, 0, 0].
    direction : (3, 3) float64
        Orthonormal; column a is the world direction of image axis a.
    unit : ``"HU"``, ``"mg/cm3"`` or ``"g/cm3"``.
    source : where the image came from (file name or ``"array"``).
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    unit: str = "HU"
    source: str = "array"

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise CTError(f"CT array must be 3-D (i, j, k), got shape {arr.shape}")
        if min(arr.shape) < 1:
            raise CTError(f"CT array is empty (shape {arr.shape})")
        if not np.issubdtype(arr.dtype, np.floating):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                raise CTError(f"CT array must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
        elif arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
        sp = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
        if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise CTError(f"spacing must be 3 positive numbers in mm, got {self.spacing!r}")
        org = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        if org.shape != (3,) or not np.all(np.isfinite(org)):
            raise CTError(f"origin must be 3 finite numbers in mm, got {self.origin!r}")
        d = np.asarray(self.direction, dtype=np.float64)
        if d.size != 9:
            raise CTError(f"direction must be a 3x3 matrix (9 numbers), got {self.direction!r}")
        d = d.reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise CTError(f"direction must be orthonormal (a rotation or reflection), got {d.tolist()}; "
                          "sheared or scaled directions are not supported: resample the image first")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "origin", org)
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "unit", normalise_unit(self.unit))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_array(cls, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
                   unit: str = "HU", *, check_unit: bool = True, source: str = "array") -> "CTImage":
        """Build a CT from an [i, j, k] array; checks the value range against ``unit``.

        Parameters
        ----------
        array : (ni, nj, nk) array of voxel values.
        spacing, origin : 3 numbers in mm (origin = world position of voxel [0,0,0] centre).
        direction : 3x3 orthonormal matrix, columns = world directions of i, j, k (default identity).
        unit : ``"HU"``, ``"mg/cm3"`` or ``"g/cm3"``.
        check_unit : set False to skip the range check (e.g. a masked crop).
        """
        ct = cls(array, spacing, origin, np.eye(3) if direction is None else direction, unit, source)
        if check_unit:
            vmin, vmax, _ = _finite_range(ct.array)
            _check_unit(vmin, vmax, ct.unit, source)
        return ct

    def with_array(self, array, unit: str | None = None) -> "CTImage":
        """Same geometry, new values (same shape); ``unit`` defaults to the current one."""
        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise CTError(f"new array has shape {arr.shape}, expected {self.shape}")
        return CTImage(arr, self.spacing, self.origin, self.direction, unit or self.unit, self.source)

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index (i, j, k, 1) to world LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing[None, :]
        a[:3, 3] = self.origin
        return a

    def world_from_index(self, ijk) -> np.ndarray:
        """World LPS coordinates (..., 3) in mm of (possibly fractional) indices (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing[None, :]).T + self.origin

    def index_from_world(self, xyz) -> np.ndarray:
        """Continuous voxel indices (..., 3) of world LPS points (..., 3) in mm."""
        xyz = np.asarray(xyz, dtype=np.float64)
        # direction is orthonormal: inverse = transpose
        return ((xyz - self.origin) @ self.direction) / self.spacing

    @property
    def index_bounds(self) -> np.ndarray:
        """(2, 3) index-space box covered by the voxels: [-0.5, n - 0.5] per axis."""
        return np.array([[-0.5, -0.5, -0.5], np.asarray(self.shape, dtype=np.float64) - 0.5])

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) axis-aligned world box (mm) enclosing all voxels (their outer faces)."""
        lo, hi = self.index_bounds
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        w = self.world_from_index(corners)
        return np.vstack([w.min(axis=0), w.max(axis=0)])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def orientation(self) -> str:
        """Three-letter code of the world direction each axis i, j, k points to, e.g. ``"LPS"``.

        Letters are the LPS/RAS anatomical directions (L/R for x, P/A for y, S/I for z) of the
        dominant component of each direction column.
        """
        letters = (("R", "L"), ("A", "P"), ("I", "S"))
        out = []
        for a in range(3):
            col = self.direction[:, a]
            ax = int(np.argmax(np.abs(col)))
            out.append(letters[ax][1] if col[ax] > 0 else letters[ax][0])
        return "".join(out)

    # ------------------------------------------------------------------ values
    @property
    def n_nan(self) -> int:
        """Number of NaN voxels."""
        if not np.issubdtype(self.array.dtype, np.floating):
            return 0
        return int(np.count_nonzero(np.isnan(self.array)))

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) of the non-NaN values, in ``unit``."""
        vmin, vmax, _ = _finite_range(self.array)
        return vmin, vmax

    def density_g_cm3(self) -> np.ndarray:
        """Voxel values as density in g/cm^3 (mg/cm^3 divided by 1000); CTError for HU."""
        if self.unit == "g/cm3":
            return self.array
        if self.unit == "mg/cm3":
            return self.array / 1000.0
        raise CTError("this CT is in HU; convert it to density with a phantom or literature calibration "
                      "(femur_fe.bone.qct_from_hu / femur_fe.bone.calibrated_ct; CLI: --calibration internal or "
                      "--calibration PHANTOM.json) first")

    def summary(self) -> dict:
        """Plain-dict description (size, spacing, orientation, unit, value range, NaN count)."""
        vmin, vmax = self.value_range
        return {
            "source": self.source,
            "shape": list(self.shape),
            "spacing_mm": self.spacing.tolist(),
            "origin_mm": self.origin.tolist(),
            "direction": self.direction.tolist(),
            "orientation": self.orientation,
            "frame": "LPS",
            "unit": self.unit,
            "value_min": vmin,
            "value_max": vmax,
            "n_nan": self.n_nan,
            "bounds_mm": self.bounds.tolist(),
            "extent_mm": (self.spacing * np.asarray(self.shape)).tolist(),
        }

    def __repr__(self) -> str:
        return (f"CTImage({self.shape[0]}x{self.shape[1]}x{self.shape[2]}, spacing "
                f"{'x'.join(f'{s:.4g}' for s in self.spacing)} mm, {self.orientation}, unit {self.unit}, "
                f"source {self.source!r})")


def _check_unit(vmin: float, vmax: float, unit: str, where: str) -> None:
    check_unit(vmin, vmax, unit, where)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _sitk():
    import SimpleITK as sitk

    return sitk


def _image_from_sitk(img, *, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sitk = _sitk()
    if img.GetDimension() != 3:
        raise CTError(f"{source}: image has {img.GetDimension()} dimensions, a CT volume needs 3")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTError(f"{source}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel "
                      "(colour/vector image); a CT needs one scalar per voxel")
    view = sitk.GetArrayViewFromImage(img)  # [k, j, i], memory owned by the image
    # one copy into C order along [i, j, k]: trilinear sampling is ~1.6x faster than on a
    # transposed (Fortran-ordered) view
    arr = np.ascontiguousarray(view.transpose(2, 1, 0))
    return (arr, np.array(img.GetSpacing(), dtype=np.float64), np.array(img.GetOrigin(), dtype=np.float64),
            np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3))


def _read_dicom_series(folder: Path, series_id: str | None):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise CTError(f"{folder}: no DICOM series found in the folder (expected .dcm slices of one CT series)")
    if series_id is None:
        if len(ids) > 1:
            raise CTError(f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); pick one with "
                          "series_id=... (CLI: --series-id)")
        series_id = ids[0]
    elif series_id not in ids:
        raise CTError(f"{folder}: series_id {series_id!r} not found; available: {', '.join(ids)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    img = reader.Execute()  # rescale slope/intercept applied by GDCM: values are HU for CT
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else ""
    return img, modality


def read_ct(path: str | os.PathLike, *, unit: str = "auto", spacing: Sequence[float] | None = None,
            origin: Sequence[float] | None = None, direction=None, check_unit: bool = True,
            series_id: str | None = None) -> CTImage:
    """Read a CT volume (NIfTI, NRRD, MetaImage, a DICOM series folder, or a ``.npy`` array).

    Parameters
    ----------
    path : file or folder
        ``.nii``/``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``, a folder of DICOM slices, or a
        ``.npy`` array indexed [i, j, k] (needs ``spacing``).
    unit : ``"auto"``, ``"HU"``, ``"mg/cm3"`` or ``"g/cm3"``
        ``"auto"`` uses a unit stored by :func:`write_ct` (NRRD/MetaImage), HU for DICOM CT,
        else guesses from the value range (:func:`guess_unit`) and raises when ambiguous.
    spacing, origin, direction : geometry for ``.npy`` arrays (spacing required, mm). For other
        formats they must be None (the file's geometry is used).
    check_unit : check the value range against the declared unit (see :func:`check_unit`).
    series_id : DICOM series to read when the folder holds several.

    Returns
    -------
    CTImage in the LPS world frame (see the module docstring).

    Raises
    ------
    CTError : unreadable file, unit contradicting the values, ambiguous unit, missing spacing.
    """
    path = Path(path)
    if not path.exists():
        raise CTError(f"{path}: no such file or folder")
    suffix = suffix_of(path)
    stored_unit: str | None = None
    modality = ""
    if path.is_dir() or suffix == ".dcm":
        if spacing is not None or origin is not None or direction is not None:
            raise CTError(f"{path}: spacing/origin/direction are taken from the DICOM headers; do not pass them")
        folder = path if path.is_dir() else path.parent
        try:
            img, modality = _read_dicom_series(folder, series_id)
        except RuntimeError as exc:
            raise CTError(f"{folder}: cannot read the DICOM series ({exc})") from exc
        arr, sp, org, d = _image_from_sitk(img, source=str(path))
    elif suffix == ".npy":
        if spacing is None:
            raise CTError(f"{path}: a .npy array has no geometry; pass spacing=(si, sj, sk) in mm "
                          "(and origin/direction if known; defaults: origin 0, identity direction)")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CTError(f"{path}: cannot load the .npy array ({exc})") from exc
        sp = np.asarray(spacing, dtype=np.float64)
        org = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    elif suffix in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if spacing is not None or origin is not None or direction is not None:
            raise CTError(f"{path}: spacing/origin/direction come from the file header; do not pass them "
                          "(resample or edit the header if it is wrong)")
        sitk = _sitk()
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise CTError(f"{path}: SimpleITK cannot read it ({str(exc).strip().splitlines()[-1]})") from exc
        if img.HasMetaDataKey(_META_UNIT_KEY):
            stored_unit = img.GetMetaData(_META_UNIT_KEY)
        arr, sp, org, d = _image_from_sitk(img, source=str(path))
        if suffix in (".nii", ".nii.gz") and np.issubdtype(arr.dtype, np.floating):
            raw_bad = nonfinite_voxels(path)  # ITK reads NaN/inf NIfTI voxels as 0
            if raw_bad is not None and raw_bad.shape == arr.shape and raw_bad.any():
                arr[raw_bad] = np.nan
    else:
        raise CTError(f"{path}: unsupported CT format {suffix!r}; use .nii/.nii.gz, .nrrd, .mha/.mhd, "
                      "a DICOM folder or .npy")

    if np.issubdtype(np.asarray(arr).dtype, np.floating):
        inf = np.isinf(arr)
        if inf.any():  # no tissue has an infinite value: missing data, like NaN
            arr = np.where(inf, np.nan, arr)
    vmin, vmax, n_nan = _finite_range(np.asarray(arr))
    if unit == "auto":
        if stored_unit:
            resolved = normalise_unit(stored_unit)
        elif modality == "CT":
            resolved = "HU"
        else:
            guessed = guess_unit(vmin, vmax)
            if guessed is None:
                raise AmbiguousUnitError(f"{path}: cannot tell the unit: the file stores none and its values "
                                         f"({vmin:.4g} to {vmax:.4g}, no air below -900) do not tell HU from "
                                         "mg/cm3; pass unit='HU', 'mg/cm3' or 'g/cm3' (CLI: --ct-unit)")
            resolved = guessed
            log.info("%s: unit guessed as %s from the value range %.4g..%.4g", path, resolved, vmin, vmax)
    else:
        resolved = normalise_unit(unit)
    if check_unit:
        _check_unit(vmin, vmax, resolved, str(path))
    if n_nan:
        warn("ct_nan_voxels", f"{path}: {n_nan} NaN voxels (NaN or inf: {100.0 * n_nan / arr.size:.3g} % of "
             f"{arr.size}), missing data; elements that touch them take their finite neighbours' values "
             "(mapping report)", log)
    return CTImage(arr, sp, org, d, resolved, str(path))


def write_ct(path: str | os.PathLike, ct: CTImage) -> Path:
    """Write ``ct`` atomically to ``.nii``/``.nii.gz``, ``.nrrd``, ``.mha`` or ``.mhd`` (+ raw).

    The unit is stored in the header (key ``femur_fe_unit``) for NRRD and MetaImage; NIfTI
    has no field for it, so read NIfTI densities back with an explicit ``unit``.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"):
        raise CTError(f"{path}: write_ct supports .nii, .nii.gz, .nrrd, .mha and .mhd (got {suffix!r}); "
                      ".npy would lose the spacing and orientation")
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(ct.array.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in ct.spacing))
    img.SetOrigin(tuple(float(s) for s in ct.origin))
    img.SetDirection(tuple(float(s) for s in ct.direction.ravel()))
    img.SetMetaData(_META_UNIT_KEY, ct.unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        sitk.WriteImage(img, str(tmp), True)
        # move companion data files (.raw/.zraw of .mhd) first, the header last
        for f in sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name):
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def _geometry_differences(spacing, origin, direction, shape, ref: CTImage, tol_mm: float = 1e-3) -> list[str]:
    diffs = []
    if tuple(shape) != ref.shape:
        diffs.append(f"shape {tuple(shape)} vs CT {ref.shape}")
    if not np.allclose(spacing, ref.spacing, rtol=1e-4, atol=1e-6):
        diffs.append(f"spacing {np.round(spacing, 6).tolist()} vs CT {np.round(ref.spacing, 6).tolist()} mm")
    if not np.allclose(origin, ref.origin, atol=max(tol_mm, 1e-3 * float(ref.spacing.min()))):
        diffs.append(f"origin {np.round(origin, 4).tolist()} vs CT {np.round(ref.origin, 4).tolist()} mm")
    if not np.allclose(direction, ref.direction, atol=1e-4):
        diffs.append(f"direction {np.round(direction, 4).tolist()} vs CT {np.round(ref.direction, 4).tolist()}")
    return diffs


def read_labels(path: str | os.PathLike, *, reference: CTImage | None = None) -> np.ndarray:
    """Read a label image as an integer [i, j, k] array; check its grid against ``reference``."""
    path = Path(path)
    if not path.exists():
        raise CTError(f"{path}: no such label file")
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CTError(f"{path}: SimpleITK cannot read it ({str(exc).strip().splitlines()[-1]})") from exc
    arr, sp, org, d = _image_from_sitk(img, source=str(path))
    if reference is not None:
        diffs = _geometry_differences(sp, org, d, arr.shape, reference)
        if diffs:
            raise CTError(f"{path}: the mask grid does not match the CT ({'; '.join(diffs)}); resample the mask "
                          "onto the CT grid (nearest neighbour) or use the matching CT")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise CTError(f"{path}: label image holds non-integer values; a mask must hold integer labels")
    return arr.astype(np.int64)


def read_mask(source=None, *, label: int | Sequence[int] | None = None,
              threshold: float | tuple[float | None, float | None] | None = None,
              reference: CTImage) -> np.ndarray:
    """Make a boolean [i, j, k] mask on the grid of ``reference``.

    Parameters
    ----------
    source : path of a label image, an array shaped like the CT, or None (threshold only)
    label : label value(s) to keep; None keeps every non-zero voxel.
    threshold : CT value ``lo`` or ``(lo, hi)`` (in the CT's unit, inclusive); keeps CT voxels in
        range. Combined with ``source`` the two are intersected.
    reference : the CT the mask belongs to.

    Raises
    ------
    CTError : grid mismatch (says what differs), no source and no threshold, empty mask.
    """
    if not isinstance(reference, CTImage):
        raise CTError(f"reference must be a CTImage (read it with femur_fe.read_ct), got {type(reference).__name__}")
    where = "mask"
    if source is None:
        if threshold is None:
            raise CTError("read_mask needs a label file/array or a threshold on the CT")
        labels = None
    elif isinstance(source, (str, os.PathLike)):
        where = str(source)
        labels = read_labels(source, reference=reference)
    else:
        labels = np.asarray(source)
        if labels.shape != reference.shape:
            raise CTError(f"mask array has shape {labels.shape} but the CT has {reference.shape}; "
                          "a mask array must be indexed [i, j, k] on the CT grid")
    if labels is None:
        mask = np.ones(reference.shape, dtype=bool)
    elif label is None:
        mask = labels != 0
    else:
        wanted = np.atleast_1d(np.asarray(label)).astype(np.int64)
        mask = np.isin(labels, wanted)
        if not mask.any():
            present = np.unique(labels)
            raise CTError(f"{where}: no voxel has label {wanted.tolist()}; labels present: "
                          f"{present[:20].tolist()}{' ...' if len(present) > 20 else ''}")
    if threshold is not None:
        lo, hi = (threshold, None) if np.isscalar(threshold) else tuple(threshold)  # type: ignore[misc]
        vals = reference.array
        with np.errstate(invalid="ignore"):
            inside = np.ones(reference.shape, dtype=bool) if lo is None else vals >= lo
            if hi is not None:
                inside &= vals <= hi
        mask = mask & inside
    if not mask.any():
        raise CTError(f"{where}: the mask is empty (no voxel selected); check the label value, the "
                      f"threshold (CT values range {reference.value_range[0]:.4g}..{reference.value_range[1]:.4g} "
                      f"{reference.unit}) or the file")
    return mask
