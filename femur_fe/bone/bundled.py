"""Parametric default bones: a proximal femur and a lumbar vertebra, with synthetic QCT.

Both bones are implicit surfaces (signed distance-like functions, negative inside) built
from smooth unions (Quilez polynomial ``smin``) of spheres, round cones, ellipsoids and
cylinders. They are sampled on a grid, contoured (VTK flying edges at 0), lightly
smoothed and filled with tetrahedra by :func:`femur_fe.bone.meshing.tetmesh_from_surface`.
The generation is deterministic (no randomness in the geometry; the CT noise uses a
fixed seed).

Coordinate frame (both bones): **LPS patient frame in mm**, the frame of
:mod:`femur_fe.io.ct` (x to the patient's Left, y Posterior, z Superior), so that meshes
and the synthetic CT volumes can be combined by the mapping code without conversion.

* Femur: origin at the femoral head centre, z along the shaft axis (superior). For a
  RIGHT femur (default) +x is medial and -x lateral, -y anterior; the shaft axis is the
  vertical line through ``landmarks["shaft_axis_point"]``. ``side="left"`` mirrors x.
* Vertebra: origin at the centre of the vertebral body, z the body axis (superior), -y
  anterior (the posterior elements lie at +y), x to the patient's left.

Density values (synthetic QCT) are in K2HPO4-equivalent mg/cm^3 and stored in the NIfTI
files as HU through a fixed, documented phantom calibration
(:data:`SYNTHETIC_CALIBRATION`). Sources of every default are given in
:class:`FemurParams`, :class:`VertebraParams`, :data:`STATE_DENSITIES` and
``meshes/README.md``; values from memory that could not be checked are marked [M].
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ..errors import FemurFeError
from ..fe.mesh import Mesh
from ..io.atomic import write_json_atomic
from ..io.ct import CTImage, read_ct, write_ct
from ..io.mesh_io import write_mesh
from ..io.surface import Surface
from .calibration import DensityCalibration
from .meshing import _surface_nets, repair_surface, tetmesh_from_surface

log = logging.getLogger(__name__)

BONES = ("femur", "vertebra")
STATES = ("healthy", "osteopenic", "osteoporotic")
SIDES = ("right", "left")
GENERATOR_VERSION = 1

#: Phantom calibration of the synthetic CT (HU -> K2HPO4 mg/cm^3): rho = 0.80028 HU + 8.1229.
#: It is the Mindways-style fit of the archived Ogo test vector (Bonelab/Ogo
#: ``mindways_calibration.py`` after the Mindways QCT PRO User Guide v5.0, [V-code]); a typical clinical slope of
#: about 0.8 mg/cm^3 per HU. Stored next to the volumes as ``calibration.json`` in the format
#: of :meth:`femur_fe.bone.calibration.DensityCalibration.from_dict`.
SYNTHETIC_CALIBRATION = {
    "slope": 0.80028e-3,       # g/cm^3 per HU
    "intercept": 8.1229e-3,    # g/cm^3
    "unit": "g/cm3",
    "mineral": "k2hpo4",
    "source": ("synthetic QCT of femur_fe bundled bones; Mindways-style K2HPO4 phantom fit of the "
               "archived Ogo test vector: rho_K2HPO4 = 0.80028 HU + 8.1229 mg/cm3"),
}


def hu_from_k2hpo4_mg(rho_mg: np.ndarray) -> np.ndarray:
    """HU giving K2HPO4 density ``rho_mg`` (mg/cm^3) under :data:`SYNTHETIC_CALIBRATION`."""
    return (np.asarray(rho_mg, dtype=np.float64) - SYNTHETIC_CALIBRATION["intercept"] * 1e3) / (
        SYNTHETIC_CALIBRATION["slope"] * 1e3)


def k2hpo4_mg_from_hu(hu: np.ndarray) -> np.ndarray:
    """K2HPO4 density (mg/cm^3) of HU values under :data:`SYNTHETIC_CALIBRATION`."""
    return SYNTHETIC_CALIBRATION["slope"] * 1e3 * np.asarray(hu, dtype=np.float64) + \
        SYNTHETIC_CALIBRATION["intercept"] * 1e3


# =============================================================================== SDF toolkit
def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (Quilez): union of two SDFs with a fillet of size ~k."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection with a fillet)."""
    return -_smin(-a, -b, k)


def _sphere(p: np.ndarray, c, r: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(c, dtype=float), axis=-1) - r


def _ellipsoid(p: np.ndarray, c, radii) -> np.ndarray:
    """Approximate ellipsoid distance (Quilez: k0 (k0 - 1) / k1), exact on the axes."""
    q = (p - np.asarray(c, dtype=float))
    r = np.asarray(radii, dtype=float)
    k0 = np.linalg.norm(q / r, axis=-1)
    k1 = np.linalg.norm(q / (r * r), axis=-1)
    # at the centre k0 = k1 = 0: the limit is -min(r) (not 0/0)
    return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -r.min())


def _round_cone(p: np.ndarray, a, b, ra: float, rb: float, squash: float = 1.0,
                squash_dir=None) -> np.ndarray:
    """Tapered capsule from ``a`` (radius ra) to ``b`` (radius rb).

    ``squash`` < 1 makes the cross-section elliptical: distances along ``squash_dir``
    (perpendicular to the segment) are divided by ``squash``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    ab = b - a
    length2 = float(ab @ ab)
    t = np.clip(((p - a) @ ab) / length2, 0.0, 1.0)
    q = p - (a + t[..., None] * ab)
    if squash != 1.0 and squash_dir is not None:
        d = np.asarray(squash_dir, dtype=float)
        d = d - (d @ ab) / length2 * ab
        d /= np.linalg.norm(d)
        comp = q @ d
        q = q + ((1.0 / squash) - 1.0) * comp[..., None] * d
    return np.linalg.norm(q, axis=-1) - (ra + t * (rb - ra))


def _segment_distance(p: np.ndarray, a, b) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# =============================================================================== parameters
@dataclass(frozen=True)
class FemurParams:
    """Anatomical parameters of the parametric proximal femur (mm, degrees).

    Defaults and sources ([V] checked, [M] from memory / typical value, unverified):

    * ``head_diameter_mm`` 46: adult mean femoral head diameter, men ~48-50, women ~43 [M].
    * ``neck_shaft_angle_deg`` 129.2: Toogood, Skalak & Cooperman 2009, Clin Orthop Relat Res
      467:876 (375 femurs, "angle of inclination" 129.23 deg) [V].
    * ``anteversion_deg`` 9.7: same study, neck version 9.73 deg [V].
    * ``offset_mm`` 40: perpendicular distance head centre - shaft axis; 3-D femoral offset
      40.0 mm in 66 Japanese hips (Diagnostics 2023, 13:1434, doi 10.3390/diagnostics13081434)
      [V].
    * ``neck_diameter_mm`` 31: minimum neck (supero-inferior) diameter ~30-33 mm [M]; the
      antero-posterior diameter is ``neck_ap_ratio`` 0.82 of it (the neck is oval) [M].
    * ``shaft_diameter_mm`` 28: shaft diameter at the distal cut; the modelled shaft widens
      linearly by 10 % towards the neck (subtrochanteric diameter ~27-31 mm [M]).
    * ``cortical_thickness_mm`` 5.0 (diaphysis) and ``neck_cortex_mm`` 1.5 (head, neck and
      trochanters; thicker inferiorly, ``calcar_cortex_mm`` 3.0): typical QCT values [M].
    * ``shaft_length_mm`` 190: distal cut below the head centre (about 125 mm below the lesser
      trochanter), a usual proximal-femur FE length [M].
    * ``lesser_trochanter_drop_mm`` 60: lesser trochanter below the head centre (the shared
      femur surface has the distal end of the lesser trochanter's flare 64 mm and its most
      prominent point 47 mm below the head centre) [M].
    """

    head_diameter_mm: float = 46.0
    neck_shaft_angle_deg: float = 129.2
    anteversion_deg: float = 9.7
    offset_mm: float = 40.0
    neck_diameter_mm: float = 31.0
    neck_ap_ratio: float = 0.82
    shaft_diameter_mm: float = 28.0
    cortical_thickness_mm: float = 5.0
    neck_cortex_mm: float = 1.5
    calcar_cortex_mm: float = 3.0
    shaft_length_mm: float = 190.0
    lesser_trochanter_drop_mm: float = 60.0

    def __post_init__(self) -> None:
        _check_positive(self, exclude=("anteversion_deg",))
        if not 100.0 <= self.neck_shaft_angle_deg <= 160.0:
            raise FemurFeError(f"neck_shaft_angle_deg must be in [100, 160] degrees, got {self.neck_shaft_angle_deg}")
        if not -30.0 <= self.anteversion_deg <= 45.0:
            raise FemurFeError(f"anteversion_deg must be in [-30, 45] degrees, got {self.anteversion_deg}")
        if self.neck_diameter_mm >= self.head_diameter_mm:
            raise FemurFeError(f"neck_diameter_mm ({self.neck_diameter_mm}) must be smaller than head_diameter_mm "
                               f"({self.head_diameter_mm}): the neck is narrower than the head")
        if self.shaft_length_mm < self.lesser_trochanter_drop_mm + 30:
            raise FemurFeError(f"shaft_length_mm ({self.shaft_length_mm}) must reach at least 30 mm below the "
                               f"lesser trochanter (lesser_trochanter_drop_mm={self.lesser_trochanter_drop_mm})")


@dataclass(frozen=True)
class VertebraParams:
    """Parameters of the parametric lumbar (L3-like) vertebra (mm).

    Defaults ([M]: typical adult L3 values from memory of Panjabi et al. 1992, Spine 17:299
    "Human lumbar vertebrae: quantitative three-dimensional anatomy", unverified):

    * ``body_width_mm`` 48 (medio-lateral endplate width), ``body_depth_mm`` 35
      (antero-posterior), ``body_height_mm`` 28 [M].
    * ``endplate_concavity_mm`` 1.5: central depth of the endplate dome; Palepu et al. 2019
      (Int J Spine Surg 13:361) measured maximum concavity depth across L1-L5 by micro-CT
      [V title; value M].
    * ``waist_mm`` 1.5: inward bow of the lateral walls at mid-height [M].
    * ``shell_thickness_mm`` 0.5 (cortical shell) and ``endplate_thickness_mm`` 0.7: sub-voxel
      at clinical resolution (Palepu 2019 [V title]; Silva et al. 1994 shell ~0.4 mm [M]).
    * ``posterior_elements``: pedicles, laminae, spinous and transverse processes (simple
      capsules) when True.
    """

    body_width_mm: float = 48.0
    body_depth_mm: float = 35.0
    body_height_mm: float = 28.0
    endplate_concavity_mm: float = 1.5
    waist_mm: float = 1.5
    shell_thickness_mm: float = 0.5
    endplate_thickness_mm: float = 0.7
    posterior_elements: bool = True

    def __post_init__(self) -> None:
        _check_positive(self, exclude=("posterior_elements", "endplate_concavity_mm", "waist_mm"))
        if not 0.0 <= self.endplate_concavity_mm < 0.25 * self.body_height_mm:
            raise FemurFeError(f"endplate_concavity_mm must be in [0, body_height/4), got {self.endplate_concavity_mm}")
        if not 0.0 <= self.waist_mm < 0.2 * self.body_depth_mm:
            raise FemurFeError(f"waist_mm must be in [0, body_depth/5), got {self.waist_mm}")


def _check_positive(params, exclude=()) -> None:
    for f in fields(params):
        if f.name in exclude:
            continue
        v = getattr(params, f.name)
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise FemurFeError(f"{type(params).__name__}.{f.name} must be a positive number (mm or degrees), "
                               f"got {v!r}")


#: Density model of each state, K2HPO4-equivalent mg/cm^3 (true tissue values before the
#: 1 mm partial-volume averaging). Targets and sources:
#: * vertebral trabecular vBMD: ACR/ISCD QCT thresholds, normal > 120, low bone mass
#:   80-120, osteoporosis < 80 mg/cm^3 (ACR-SPR-SSR practice parameter for QCT 2018 [M];
#:   same thresholds in the Chinese QCT guideline, PMC7495321 table 2 [V]); young healthy
#:   ~150-200 [M]. Chosen means: 170 / 100 / 65.
#: * femoral trabecular: neck/head denser than the trochanter; base levels [M].
#: * cortical (femur): ~1.0-1.2 g/cm^3 mineral equivalent, tissue density falls and the
#:   cortex thins with age (endosteal trabecularisation) [M]; thickness factors are
#:   modelling assumptions.
STATE_DENSITIES: dict[str, dict[str, dict[str, float]]] = {
    "femur": {
        "healthy": {"cortical": 1150.0, "trabecular": 190.0, "head": 330.0, "compressive": 260.0,
                    "tensile": 110.0, "marrow": 10.0, "cortex_factor": 1.0},
        "osteopenic": {"cortical": 1100.0, "trabecular": 125.0, "head": 230.0, "compressive": 180.0,
                       "tensile": 70.0, "marrow": 10.0, "cortex_factor": 0.8},
        "osteoporotic": {"cortical": 1050.0, "trabecular": 80.0, "head": 160.0, "compressive": 120.0,
                         "tensile": 40.0, "marrow": 10.0, "cortex_factor": 0.6},
    },
    "vertebra": {
        "healthy": {"cortical": 1000.0, "trabecular": 170.0, "posterior": 260.0, "cortex_factor": 1.0},
        "osteopenic": {"cortical": 950.0, "trabecular": 100.0, "posterior": 180.0, "cortex_factor": 0.85},
        "osteoporotic": {"cortical": 900.0, "trabecular": 65.0, "posterior": 130.0, "cortex_factor": 0.7},
    },
}
SOFT_TISSUE_HU = 40.0     # muscle-like background around the bone [M]
NOISE_HU = 12.0           # Gaussian image noise (1 sigma), fixed seed [M: typical clinical QCT]


# =============================================================================== bone model
@dataclass(frozen=True, eq=False)
class BoneModel:
    """A generated bone: its implicit geometry, surface, tet mesh and landmarks.

    Attributes
    ----------
    name : ``"femur"`` or ``"vertebra"``
    side : ``"right"``/``"left"`` (femur) or ``"none"``
    params : FemurParams or VertebraParams
    surface : closed outward Surface, mm (LPS frame, see the module docstring)
    mesh : tet Mesh with node set ``"surface"`` (and ``"distal_cut"`` for the femur; the
        endplate regions of the vertebra are found at run time by ``femur_fe.analysis.regions``)
    landmarks : name -> (3,) point or unit vector, mm, LPS frame
    """

    name: str
    side: str
    params: Any
    surface: Surface
    mesh: Mesh
    landmarks: Mapping[str, np.ndarray] = field(default_factory=dict)

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance-like function at world points (n, 3), mm; negative inside."""
        return _SDF[self.name](np.asarray(points, dtype=float), self.params, self.side)

    def to_dict(self) -> dict:
        return {"name": self.name, "side": self.side, "params": asdict(self.params),
                "landmarks": {k: np.asarray(v).tolist() for k, v in self.landmarks.items()},
                "n_points": self.mesh.n_points, "n_cells": self.mesh.n_cells,
                "cell_type": self.mesh.cell_type, "generator_version": GENERATOR_VERSION}


def _anat_from_world(p: np.ndarray, side: str) -> np.ndarray:
    """World LPS -> construction frame (X lateral, Y anterior, Z superior for a femur)."""
    q = np.array(p, dtype=float, copy=True)
    if side == "right":
        q[..., 0] *= -1.0   # lateral of a right femur = patient right = -x(LPS)
    q[..., 1] *= -1.0       # anterior = -y(LPS)
    return q


def _world_from_anat(q: np.ndarray, side: str) -> np.ndarray:
    return _anat_from_world(q, side)  # the map is its own inverse


# ------------------------------------------------------------------------------- femur
class _FemurGeom:
    """Derived femur construction geometry (construction frame, mm)."""

    def __init__(self, fp: FemurParams) -> None:
        th = np.radians(fp.neck_shaft_angle_deg)
        av = np.radians(fp.anteversion_deg)
        self.R = fp.head_diameter_mm / 2.0
        # unit vector along the neck, from the shaft towards the head
        self.n = np.array([-np.sin(th) * np.cos(av), np.sin(th) * np.sin(av), -np.cos(th)])
        self.L = fp.offset_mm / np.sin(th)           # shaft-axis intersection -> head centre
        self.p0 = -self.L * self.n                   # neck axis meets the shaft axis here
        self.axis_xy = self.p0[:2].copy()
        self.rs = fp.shaft_diameter_mm / 2.0
        self.rn = fp.neck_diameter_mm / 2.0
        self.z_cut = -fp.shaft_length_mm
        self.z_lt = -fp.lesser_trochanter_drop_mm
        # anterior direction perpendicular to the neck: squash the neck along it
        y = np.array([0.0, 1.0, 0.0])
        self.neck_ap = y - (y @ self.n) * self.n
        self.neck_ap /= np.linalg.norm(self.neck_ap)
        ax, ay = self.axis_xy
        z0 = self.p0[2]
        self.gt_c = np.array([ax + 0.55 * self.rs + 9.0, ay - 5.0, z0 + 14.0])
        self.gt_r = np.array([13.0, 15.0, 17.0])
        pm = np.array([-np.cos(np.radians(40)), -np.sin(np.radians(40)), 0.0])  # posteromedial
        self.lt_c = np.array([ax, ay, self.z_lt]) + 0.9 * self.rs * pm
        self.lt_r = np.array([9.0, 9.0, 13.0])
        self.it_c = np.array([ax + 3.0, ay - 2.0, z0 - 6.0])
        self.it_r = np.array([22.0, 16.0, 26.0])

    def shaft_point(self, z: float) -> np.ndarray:
        return np.array([self.axis_xy[0], self.axis_xy[1], z])


def _femur_sdf_anat(q: np.ndarray, fp: FemurParams) -> np.ndarray:
    g = _FemurGeom(fp)
    head = _sphere(q, (0.0, 0.0, 0.0), g.R)
    neck = _round_cone(q, -0.55 * g.R * g.n, -0.8 * g.L * g.n, g.rn, 1.3 * g.rn,
                       squash=fp.neck_ap_ratio, squash_dir=g.neck_ap)
    d = _smin(head, neck, 5.0)
    d = _smin(d, _ellipsoid(q, g.it_c, g.it_r), 12.0)
    d = _smin(d, _ellipsoid(q, g.gt_c, g.gt_r), 9.0)
    d = _smin(d, _ellipsoid(q, g.lt_c, g.lt_r), 7.0)
    shaft = _round_cone(q, g.shaft_point(g.z_cut - 20.0), g.shaft_point(g.p0[2] + 5.0), g.rs, 1.1 * g.rs)
    d = _smin(d, shaft, 14.0)
    return np.maximum(d, g.z_cut - q[..., 2])


def _femur_sdf(p: np.ndarray, fp: FemurParams, side: str) -> np.ndarray:
    return _femur_sdf_anat(_anat_from_world(p, side), fp)


def _femur_landmarks(fp: FemurParams, side: str) -> dict[str, np.ndarray]:
    g = _FemurGeom(fp)
    w = lambda v: _world_from_anat(np.asarray(v, dtype=float), side)  # noqa: E731
    return {
        "head_centre": w(np.zeros(3)),
        "head_radius": np.array(g.R),
        "neck_axis": w(g.n),                         # unit vector from the shaft to the head
        "shaft_axis": np.array([0.0, 0.0, 1.0]),      # proximal
        "shaft_axis_point": w(g.shaft_point(0.0)),
        "neck_shaft_intersection": w(g.p0),
        "greater_trochanter": w(g.gt_c + np.array([0.0, 0.0, g.gt_r[2]])),
        "lesser_trochanter": w(g.lt_c),
        "distal_cut_centre": w(g.shaft_point(g.z_cut)),
        "neck_shaft_angle_deg": np.array(fp.neck_shaft_angle_deg),
        "anteversion_deg": np.array(fp.anteversion_deg),
    }


# ------------------------------------------------------------------------------- vertebra
def _vertebra_sdf_anat(q: np.ndarray, vp: VertebraParams) -> np.ndarray:
    a = vp.body_width_mm / 2.0
    b = vp.body_depth_mm / 2.0
    h = vp.body_height_mm / 2.0
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    # lateral waist: the cross-section shrinks towards mid-height
    zz = np.clip(z / h, -1.0, 1.0)
    shrink = vp.waist_mm * (1.0 - zz * zz)
    ea, eb = a - shrink, b - shrink
    # ellipse distance approximation in the transverse plane
    k0 = np.sqrt((x / ea) ** 2 + (y / eb) ** 2)
    k1 = np.sqrt((x / ea ** 2) ** 2 + (y / eb ** 2) ** 2)
    d2 = np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -np.minimum(ea, eb))
    # posterior wall concavity (kidney shape): carve a soft cylinder behind the body
    carve = np.sqrt(x ** 2 + (y + b + 0.55 * b) ** 2) - 0.85 * b
    d2 = _smax(d2, -carve, 4.0)
    # endplates: domes sinking into the body by `endplate_concavity_mm` at the centre
    rr = np.clip((x / a) ** 2 + (y / b) ** 2, 0.0, 1.0)
    top = h - vp.endplate_concavity_mm * (1.0 - rr)
    dz = np.maximum(z - top, -top - z)
    d = _smax(d2, dz, 3.0)
    if vp.posterior_elements:
        # construction frame: +Y anterior; posterior elements at -Y
        ped_y0, ped_y1 = -0.75 * b, -b - 14.0
        zc = 0.15 * h
        for sx in (-1.0, 1.0):
            ped = _round_cone(q, (sx * 0.42 * a, ped_y0, zc), (sx * 0.45 * a, ped_y1, zc), 4.5, 4.5)
            d = _smin(d, ped, 3.0)
            tp = _round_cone(q, (sx * 0.45 * a, ped_y1, zc), (sx * (a + 14.0), ped_y1 - 2.0, zc + 1.0), 3.5, 2.5)
            d = _smin(d, tp, 3.0)
            lam = _round_cone(q, (sx * 0.45 * a, ped_y1, zc), (0.0, ped_y1 - 12.0, zc), 4.0, 4.0)
            d = _smin(d, lam, 3.0)
            # articular processes
            sup = _round_cone(q, (sx * 0.5 * a, ped_y1 - 3.0, zc), (sx * 0.55 * a, ped_y1 - 5.0, h + 4.0), 3.5, 3.0)
            inf = _round_cone(q, (sx * 0.3 * a, ped_y1 - 9.0, zc), (sx * 0.32 * a, ped_y1 - 11.0, -h - 2.0), 3.5, 3.0)
            d = _smin(d, _smin(sup, inf, 2.0), 2.5)
        sp = _round_cone(q, (0.0, ped_y1 - 12.0, zc), (0.0, ped_y1 - 38.0, zc - 4.0), 4.0, 3.0,
                         squash=0.6, squash_dir=(1.0, 0.0, 0.0))
        d = _smin(d, sp, 3.0)
    return d


def _vertebra_sdf(p: np.ndarray, vp: VertebraParams, side: str) -> np.ndarray:
    return _vertebra_sdf_anat(_anat_from_world(p, "left"), vp)  # "left": x kept, y flipped


def _vertebra_landmarks(vp: VertebraParams) -> dict[str, np.ndarray]:
    h = vp.body_height_mm / 2.0
    return {
        "body_centre": np.zeros(3),
        "axis": np.array([0.0, 0.0, 1.0]),
        "anterior": np.array([0.0, -1.0, 0.0]),
        "superior_endplate_centre": np.array([0.0, 0.0, h - vp.endplate_concavity_mm]),
        "inferior_endplate_centre": np.array([0.0, 0.0, -h + vp.endplate_concavity_mm]),
    }


_SDF: dict[str, Callable[[np.ndarray, Any, str], np.ndarray]] = {"femur": _femur_sdf, "vertebra": _vertebra_sdf}


# =============================================================================== surface + mesh
def _bounds(name: str, params, side: str) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box (lo, hi) enclosing the bone with a margin, mm."""
    if name == "femur":
        g = _FemurGeom(params)
        corners = np.array([[-g.R - 6, g.axis_xy[1] - 40, g.z_cut - 2],
                            [g.gt_c[0] + g.gt_r[0] + 10, max(g.R, 25.0) + 8, g.R + 6]])
        # ensure the head (anterior by anteversion) and the lesser trochanter fit
        corners[0, 1] = min(corners[0, 1], -g.R - 8)
        w = _world_from_anat(corners, side)
        return np.minimum(w[0], w[1]), np.maximum(w[0], w[1])
    a, b, h = params.body_width_mm / 2, params.body_depth_mm / 2, params.body_height_mm / 2
    ext_x = a + (16.0 if params.posterior_elements else 0.0) + 4
    back = b + (56.0 if params.posterior_elements else 0.0) + 4
    return np.array([-ext_x, -b - 4, -h - 8]), np.array([ext_x, back, h + 8])


def _grid_axes(lo: np.ndarray, hi: np.ndarray, h: float) -> list[np.ndarray]:
    """Grid coordinates on multiples of ``h`` covering [lo, hi] (deterministic)."""
    return [np.arange(np.floor(lo[i] / h), np.ceil(hi[i] / h) + 1) * h for i in range(3)]


def _sample_sdf(func: Callable[[np.ndarray], np.ndarray], axes: list[np.ndarray],
                chunk: int = 2_000_000) -> np.ndarray:
    """Evaluate ``func`` on the grid spanned by ``axes`` ([i, j, k] array), in z-chunks."""
    nx, ny, nz = (len(a) for a in axes)
    out = np.empty((nx, ny, nz), dtype=np.float32)
    X, Y = np.meshgrid(axes[0], axes[1], indexing="ij")
    per = max(1, chunk // (nx * ny))
    for k0 in range(0, nz, per):
        zs = axes[2][k0:k0 + per]
        pts = np.empty((nx, ny, len(zs), 3))
        pts[..., 0] = X[..., None]
        pts[..., 1] = Y[..., None]
        pts[..., 2] = zs[None, None, :]
        out[:, :, k0:k0 + len(zs)] = func(pts.reshape(-1, 3)).reshape(nx, ny, len(zs))
    return out


def _project_to_zero(func: Callable[[np.ndarray], np.ndarray], pts: np.ndarray, iters: int = 5,
                     eps: float = 1e-3) -> np.ndarray:
    """Newton steps moving points onto the zero level of ``func`` (central-difference gradient)."""
    for _ in range(iters):
        d = func(pts)
        grad = np.stack([(func(pts + eps * e) - func(pts - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
        pts = pts - (d / np.maximum((grad * grad).sum(axis=1), 1e-12))[:, None] * grad
    return pts


def bone_surface(name: str, params, side: str = "right", *, edge_length: float = 2.0) -> Surface:
    """Closed, well-shaped surface of a parametric bone with edges of about ``edge_length`` mm.

    The inside (SDF < 0) is sampled on a grid of spacing ``0.8 * edge_length``, contoured
    with surface nets (:func:`femur_fe.bone.meshing._surface_nets`), and every vertex is moved
    onto the exact zero level of the implicit function by Newton steps, so the geometry does
    not depend on the grid beyond the vertex placement.
    """
    if name not in _SDF:
        raise FemurFeError(f"name must be one of {BONES}, got {name!r}")
    h = 0.8 * float(edge_length)
    lo, hi = _bounds(name, params, side)
    axes = _grid_axes(lo, hi, h)
    func = lambda p: _SDF[name](p, params, side)  # noqa: E731
    vals = _sample_sdf(func, axes)
    nets = _surface_nets(vals < 0, h, (axes[0][0], axes[1][0], axes[2][0]))
    s = Surface(_project_to_zero(func, nets.points), nets.faces, f"<parametric {name}>")
    if not s.is_watertight or s.volume <= 0:
        s, _ = repair_surface(s)
    return s


def _make_bone(name: str, params, side: str, element_size: float, order: int) -> BoneModel:
    surf = bone_surface(name, params, side, edge_length=element_size)
    mesh = tetmesh_from_surface(surf, element_size=element_size, order=order, remesh=False)
    if name == "femur":
        z_cut = -params.shaft_length_mm
        on_cut = np.flatnonzero(np.abs(mesh.points[:, 2] - z_cut) < 0.05)
        mesh = mesh.with_node_set("distal_cut", on_cut)
        lms = _femur_landmarks(params, side)
    else:
        lms = _vertebra_landmarks(params)
    return BoneModel(name, side if name == "femur" else "none", params, surf, mesh, lms)


def make_femur(*, side: str = "right", element_size: float = 2.0, order: int = 1,
               **params: float) -> BoneModel:
    """Generate the parametric proximal femur (see :class:`FemurParams` for ``params``).

    Parameters
    ----------
    side : ``"right"`` (default) or ``"left"`` (mirror image in x)
    element_size : target tet edge length, mm (2.0 gives about 25k nodes)
    order : 1 (tet4) or 2 (tet10)
    **params : overrides of :class:`FemurParams` fields (mm, degrees)

    Returns
    -------
    BoneModel (LPS frame, origin at the head centre, z along the shaft axis)
    """
    if side not in SIDES:
        raise FemurFeError(f"side must be 'right' or 'left', got {side!r}")
    return _make_bone("femur", _params(FemurParams, params), side, element_size, order)


def make_vertebra(*, element_size: float = 2.0, order: int = 1, **params: Any) -> BoneModel:
    """Generate the parametric lumbar vertebra (see :class:`VertebraParams` for ``params``).

    Returns a BoneModel (LPS frame, origin at the body centre, z the body axis, -y anterior).
    """
    return _make_bone("vertebra", _params(VertebraParams, params), "none", element_size, order)


def _params(cls, overrides: Mapping[str, Any]):
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise FemurFeError(f"unknown {cls.__name__} parameter(s) {unknown}; valid names: {sorted(names)}")
    vals = {}
    for k, v in overrides.items():
        if names[k].type in ("bool", bool):
            vals[k] = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")
        else:
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                raise FemurFeError(f"{cls.__name__}.{k} must be a number, got {v!r}") from None
    return cls(**vals)


# =============================================================================== synthetic QCT
def _femur_density_mg(p: np.ndarray, fp: FemurParams, side: str, state: str):
    """Density model at world points (n, 3) of the femur (K2HPO4 mg/cm^3).

    Returns (cortical thickness mm, cortical density, trabecular/marrow density), each (n,).
    """
    s = STATE_DENSITIES["femur"][state]
    g = _FemurGeom(fp)
    q = _anat_from_world(p, side)
    z = q[:, 2]
    # diaphysis weight: 1 well below the lesser trochanter, 0 above it
    w_shaft = _smoothstep(g.z_lt - 10.0, g.z_lt - 45.0, z)
    # cortical thickness: thin metaphyseal cortex, thick diaphysis, thicker inferior neck (calcar)
    t_meta = fp.neck_cortex_mm
    inferior_neck = np.exp(-((_segment_distance(q, -0.9 * g.R * g.n + np.array([0, 0, -g.rn]),
                                                g.shaft_point(g.p0[2] - 18.0) + np.array([-g.rs, 0, 0]))) / 6.0) ** 2)
    t_cort = s["cortex_factor"] * (w_shaft * fp.cortical_thickness_mm + (1 - w_shaft) * t_meta
                                   + (1 - w_shaft) * (fp.calcar_cortex_mm - t_meta) * inferior_neck)
    # trabecular field: base + head + principal compressive and tensile groups
    head_w = _smoothstep(0.2 * g.R, -0.3 * g.R, _sphere(q, (0, 0, 0), g.R) + 0.0)
    comp_a = np.array([-0.25 * g.R, 0.0, 0.8 * g.R])                     # superior head
    comp_b = g.shaft_point(g.p0[2] - 15.0) + np.array([-0.9 * g.rs, 0.0, 0.0])  # medial calcar
    comp = np.exp(-(_segment_distance(q, comp_a, comp_b) / 7.0) ** 2)
    ten_a = np.array([-0.1 * g.R, 0.0, -0.75 * g.R])                     # inferior head
    ten_m = -0.5 * g.L * g.n + np.array([0.0, 0.0, 0.75 * g.rn])           # superior neck
    ten_b = g.shaft_point(g.p0[2] - 5.0) + np.array([0.9 * g.rs, 0.0, 0.0])  # lateral cortex below GT
    ten = np.exp(-(np.minimum(_segment_distance(q, ten_a, ten_m), _segment_distance(q, ten_m, ten_b)) / 4.5) ** 2)
    trab = s["trabecular"] + (s["head"] - s["trabecular"]) * head_w
    trab = np.maximum(trab, s["trabecular"] + s["compressive"] * comp)
    trab = trab + s["tensile"] * ten * (1 - head_w)
    # greater trochanter is sparse; diaphysis is a marrow canal
    gt_w = _smoothstep(4.0, -6.0, _ellipsoid(q, g.gt_c, g.gt_r))
    trab = trab * (1.0 - 0.35 * gt_w)
    trab = (1.0 - w_shaft) * trab + w_shaft * s["marrow"]
    return t_cort, np.full(len(p), s["cortical"]), trab


def _vertebra_density_mg(p: np.ndarray, vp: VertebraParams, state: str):
    """Density model of the vertebra; returns (cortical thickness mm, cortical, trabecular) (n,)."""
    s = STATE_DENSITIES["vertebra"][state]
    q = _anat_from_world(p, "left")
    h = vp.body_height_mm / 2.0
    b = vp.body_depth_mm / 2.0
    in_body = q[:, 1] > -0.8 * b
    # endplate proximity: denser trabeculae near the endplates, sparser centrally/anteriorly
    dz = h - np.abs(q[:, 2])
    trab = s["trabecular"] * (0.98 + 0.25 * np.exp(-np.maximum(dz, 0.0) / 4.0)
                              - 0.05 * np.clip(q[:, 1] / b, 0.0, 1.0))
    trab = np.where(in_body, trab, s["posterior"])
    endplate_zone = (np.abs(q[:, 2]) > h - vp.endplate_concavity_mm - 2.0) & in_body
    t_cort = s["cortex_factor"] * np.where(endplate_zone, vp.endplate_thickness_mm, vp.shell_thickness_mm)
    t_cort = np.where(in_body, t_cort, s["cortex_factor"] * 1.0)   # posterior elements: ~1 mm cortex
    return t_cort, np.full(len(p), s["cortical"]), trab


def synthetic_qct(bone: BoneModel | str, state: str = "healthy", *, voxel_mm: float = 1.0,
                  supersample: int = 2, noise_hu: float = NOISE_HU, seed: int = 20240601):
    """Synthetic QCT volume (HU, integer values) of a parametric bone in one bone state.

    Partial-volume model: the implicit function is sampled at the voxel centres and
    trilinearly refined to a grid ``supersample`` times finer; on that grid the inside
    (SDF < 0) and the depth below the surface (-SDF: exact for the spheres, cylinders and
    planes of the construction, a close approximation for the ellipsoids and smooth unions)
    give, per voxel, the fractions of cortical bone (depth < local cortical
    thickness), of trabecular bone/marrow and of soft tissue. The smooth density fields
    of :data:`STATE_DENSITIES` (K2HPO4 mg/cm^3) are evaluated at the voxel centres and
    mixed with those fractions, converted to HU with :data:`SYNTHETIC_CALIBRATION`, given
    Gaussian noise (``noise_hu``, fixed ``seed``) and rounded.

    Parameters
    ----------
    bone : a BoneModel, or ``"femur"`` / ``"vertebra"`` for the default parameters
    state : ``"healthy"``, ``"osteopenic"`` or ``"osteoporotic"``
    voxel_mm : isotropic voxel size, mm

    Returns
    -------
    femur_fe.io.ct.CTImage in HU (LPS frame, identity direction)
    """
    from scipy.ndimage import zoom


    if isinstance(bone, str):
        if bone not in BONES:
            raise FemurFeError(f"bone must be one of {BONES} or a BoneModel, got {bone!r}")
        name, params, side = bone, (FemurParams() if bone == "femur" else VertebraParams()), \
            ("right" if bone == "femur" else "none")
    else:
        name, params, side = bone.name, bone.params, bone.side
    if state not in STATES:
        raise FemurFeError(f"state must be one of {STATES}, got {state!r}")
    if not voxel_mm > 0 or int(supersample) < 1:
        raise FemurFeError(f"voxel_mm must be > 0 and supersample >= 1, got {voxel_mm}, {supersample}")
    s = int(supersample)
    lo, hi = _bounds(name, params, side)
    axes = _grid_axes(lo - 4.0, hi + 4.0, voxel_mm)          # voxel centres
    shape = tuple(len(a) for a in axes)
    sdf = _sample_sdf(lambda p: _SDF[name](p, params, side), axes)
    # fine grid: sub-sample centres at (i + (m + 0.5)/s - 0.5) voxel units; order-1 zoom with
    # grid_mode=True maps exactly those positions
    fine_sdf = zoom(sdf, s, order=1, grid_mode=True, mode="nearest")
    inside = fine_sdf < 0
    depth = -fine_sdf
    del fine_sdf
    frac_in = inside.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))
    # voxels touching bone: evaluate the density model at their centres
    touch = frac_in > 0
    ii, jj, kk = np.nonzero(touch)
    pts = np.column_stack([axes[0][ii], axes[1][jj], axes[2][kk]])
    if name == "femur":
        t_cort, rho_cort, rho_trab = _femur_density_mg(pts, params, side, state)
    else:
        t_cort, rho_cort, rho_trab = _vertebra_density_mg(pts, params, state)
    t_field = np.zeros(shape, dtype=np.float32)
    t_field[touch] = t_cort
    t_fine = np.repeat(np.repeat(np.repeat(t_field, s, 0), s, 1), s, 2)
    cort = inside & (depth < t_fine)
    del t_fine, depth
    frac_cort = cort.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))[touch]
    soft = k2hpo4_mg_from_hu(SOFT_TISSUE_HU)
    rho = np.full(shape, soft, dtype=np.float64)
    fin = frac_in[touch]
    rho[touch] = frac_cort * rho_cort + (fin - frac_cort) * rho_trab + (1.0 - fin) * soft
    hu = hu_from_k2hpo4_mg(rho)
    if noise_hu > 0:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_hu, size=shape)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return CTImage.from_array(hu, spacing=(voxel_mm,) * 3, origin=np.array([a[0] for a in axes]), unit="HU",
                              source=f"synthetic QCT {name} {state}")


# =============================================================================== bundled files
class BundledBone(NamedTuple):
    """Paths of a bundled bone: tet mesh (VTU), synthetic QCT (NIfTI, HU), calibration JSON."""

    mesh: Path
    ct: Path
    calibration: Path
    info: Path


def bundled_file_names(name: str, state: str) -> dict[str, str]:
    """File names of a bundled bone (inside the meshes folder)."""
    if name not in BONES:
        raise FemurFeError(f"name must be one of {BONES}, got {name!r}")
    if state not in STATES:
        raise FemurFeError(f"state must be one of {STATES}, got {state!r}")
    stem = "femur_right" if name == "femur" else "vertebra_L3"
    return {"mesh": f"{stem}.vtu", "ct": f"{stem}_{state}_qct.nii.gz", "calibration": "calibration.json",
            "info": f"{stem}.json"}


def meshes_dir() -> Path:
    """Folder holding the bundled bones.

    Looked up in this order: ``FEMUR_FE_MESHES`` (environment), the package data folder
    ``femur_fe/_meshes`` (filled by ``setup.py``'s build step in a normal, non-editable
    install), then the source tree's top-level ``meshes/`` (editable installs, checkouts).
    """
    env = os.environ.get("FEMUR_FE_MESHES")
    cands = ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1] / "_meshes",
                                             Path(__file__).resolve().parents[2] / "meshes"]
    for c in cands:
        if (c / "calibration.json").exists():
            return c
    raise FemurFeError("bundled bones not found (looked in " + ", ".join(str(c) for c in cands) +
                       "); reinstall femur_fe (`pip install .`) or regenerate them with "
                       "`femur-fe make-bone femur -o meshes` and `femur-fe make-bone vertebra -o meshes`")


def bundled_bone(name: str = "femur", state: str = "osteoporotic") -> BundledBone:
    """Paths of the packaged default bone ``name`` in bone ``state``.

    Returns
    -------
    BundledBone(mesh, ct, calibration, info): the tet mesh (VTU, LPS mm), the synthetic
    QCT (NIfTI, HU, int16), the HU -> K2HPO4 calibration (JSON, for
    ``femur_fe.bone.calibration.DensityCalibration.from_dict``) and the generation parameters.
    """
    names = bundled_file_names(name, state)
    folder = meshes_dir()
    paths = {k: folder / v for k, v in names.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FemurFeError(f"bundled files missing: {missing}; regenerate with `femur-fe make-bone {name} -o {folder}`")
    return BundledBone(**paths)


def load_bundled_qct(name: str = "femur", state: str = "osteoporotic"):
    """Read a bundled synthetic QCT volume and its calibration.

    NIfTI has no unit field and the synthetic volumes contain no air, so the unit cannot be
    guessed from the values: this reads them explicitly as HU.

    Returns
    -------
    (femur_fe.io.ct.CTImage in HU, femur_fe.bone.calibration.DensityCalibration HU -> K2HPO4 g/cm^3)
    """
    paths = bundled_bone(name, state)
    cal = DensityCalibration.from_dict(json.loads(paths.calibration.read_text(encoding="utf-8")))
    return read_ct(paths.ct, unit="HU"), cal


def write_bone(out_dir: str | os.PathLike, name: str, *, states=STATES, side: str = "right",
               element_size: float | None = None, order: int = 1, params: Mapping[str, Any] | None = None,
               voxel_mm: float = 1.0) -> dict[str, Path]:
    """Generate a bone and write its mesh, QCT volumes, calibration and parameters to ``out_dir``.

    Files: ``<stem>.vtu``, ``<stem>_<state>_qct.nii.gz`` for each state, ``calibration.json``
    and ``<stem>.json`` (parameters, landmarks, counts). All writes are atomic.
    """
    out = Path(out_dir)
    params = dict(params or {})
    if name == "femur":
        bone = make_femur(side=side, element_size=element_size or 2.0, order=order, **params)
        stem = "femur_right" if side == "right" else "femur_left"
    elif name == "vertebra":
        bone = make_vertebra(element_size=element_size or 2.0, order=order, **params)
        stem = "vertebra_L3"
    else:
        raise FemurFeError(f"name must be one of {BONES}, got {name!r}")
    written: dict[str, Path] = {}
    # node sets are not stored: VTU has no sets (meshio would turn them into point arrays) and
    # load regions are found at run time by femur_fe.analysis.regions
    written["mesh"] = write_mesh(out / f"{stem}.vtu", replace(bone.mesh, node_sets={}))
    for st in states:
        ct = synthetic_qct(bone, st, voxel_mm=voxel_mm)
        written[f"ct_{st}"] = write_ct(out / f"{stem}_{st}_qct.nii.gz", ct)
    written["calibration"] = write_json_atomic(out / "calibration.json", SYNTHETIC_CALIBRATION)
    info = bone.to_dict()
    info.update({"states": list(states), "element_size_mm": element_size or 2.0,
                 "voxel_mm": voxel_mm, "frame": "LPS mm (x patient left, y posterior, z superior)",
                 "density_unit_in_ct": "HU (see calibration.json)",
                 "state_densities_mg_cm3_k2hpo4": {st: STATE_DENSITIES[name][st] for st in states}})
    written["info"] = write_json_atomic(out / f"{stem}.json", info)
    return written
