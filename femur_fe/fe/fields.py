"""Derived strain/stress fields: principal strains, von Mises, SED, effective strain.

All functions are vectorised over leading axes: a tensor argument has shape
``(..., 3, 3)`` with **tensor** (not engineering) shear components, e.g. the
``(m, 3, 3)`` element-centroid strains of a result or ``(m, q, 3, 3)`` quadrature
values. Units: strain dimensionless (mm/mm), stress MPa, strain energy density
MPa = mJ/mm^3.

Voigt order used in result files (``voigt_from_tensor``): ``xx, yy, zz, xy, yz, xz``
with tensor components (so ``strain[..., 3] = eps_xy = gamma_xy / 2``).

Nodal values are volume-weighted averages of element values::

    f_node = sum_e V_e f_e / sum_e V_e      (over the elements e that contain the node)

with ``V_e`` from :meth:`femur_fe.Mesh.cell_volumes`. Nodes used by no element get NaN.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import FemurFeError, LoadCaseError

log = logging.getLogger(__name__)

#: component (i, j) of each Voigt slot, order xx, yy, zz, xy, yz, xz
VOIGT_ORDER = ("xx", "yy", "zz", "xy", "yz", "xz")
_VOIGT_IJ = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2))


def _as_tensor(t, name: str) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (3, 3):
        raise FemurFeError(f"{name} must have shape (..., 3, 3) (tensor components), got {arr.shape}; "
                           f"convert Voigt (..., 6) arrays with femur_fe.fe.fields.tensor_from_voigt")
    return arr


def voigt_from_tensor(tensor) -> np.ndarray:
    """Pack symmetric ``(..., 3, 3)`` tensors into ``(..., 6)``: xx, yy, zz, xy, yz, xz.

    Tensor shear components are stored (no factor 2). The symmetric part is used.
    """
    t = _as_tensor(tensor, "tensor")
    out = np.empty(t.shape[:-2] + (6,), dtype=np.float64)
    for k, (i, j) in enumerate(_VOIGT_IJ):
        out[..., k] = t[..., i, j] if i == j else 0.5 * (t[..., i, j] + t[..., j, i])
    return out


def tensor_from_voigt(voigt) -> np.ndarray:
    """Unpack ``(..., 6)`` arrays (xx, yy, zz, xy, yz, xz; tensor shear) into ``(..., 3, 3)``."""
    v = np.asarray(voigt, dtype=np.float64)
    if v.ndim < 1 or v.shape[-1] != 6:
        raise FemurFeError(f"voigt must have shape (..., 6) in order {', '.join(VOIGT_ORDER)}, got {v.shape}")
    out = np.empty(v.shape[:-1] + (3, 3), dtype=np.float64)
    for k, (i, j) in enumerate(_VOIGT_IJ):
        out[..., i, j] = v[..., k]
        out[..., j, i] = v[..., k]
    return out


def principal_values(tensor) -> np.ndarray:
    """Eigenvalues of symmetric ``(..., 3, 3)`` tensors sorted descending: ``(..., 3)``."""
    t = _as_tensor(tensor, "tensor")
    return np.linalg.eigvalsh(0.5 * (t + np.swapaxes(t, -1, -2)))[..., ::-1]


def principal_strains(strain) -> tuple[np.ndarray, np.ndarray]:
    """Principal strains and directions.

    Parameters
    ----------
    strain : (..., 3, 3) small-strain tensors (tensor shear)

    Returns
    -------
    values : (..., 3) eps1 >= eps2 >= eps3
    directions : (..., 3, 3) unit eigenvectors as **columns**: ``directions[..., :, k]``
        belongs to ``values[..., k]``.
    """
    t = _as_tensor(strain, "strain")
    w, v = np.linalg.eigh(0.5 * (t + np.swapaxes(t, -1, -2)))
    return w[..., ::-1], v[..., :, ::-1]


def von_mises(stress) -> np.ndarray:
    """Von Mises equivalent stress (MPa) of ``(..., 3, 3)`` stress tensors.

    ``sqrt(3/2 s:s)`` with ``s`` the deviatoric stress.
    """
    s = _as_tensor(stress, "stress")
    s = 0.5 * (s + np.swapaxes(s, -1, -2))
    tr = np.trace(s, axis1=-2, axis2=-1)
    dev = s - tr[..., None, None] / 3.0 * np.eye(3)
    return np.sqrt(1.5 * np.einsum("...ij,...ij->...", dev, dev))


def strain_energy_density(stress, strain) -> np.ndarray:
    """SED = 0.5 sigma:eps in MPa = mJ/mm^3 (tensor shear components for both)."""
    s = _as_tensor(stress, "stress")
    e = _as_tensor(strain, "strain")
    if s.shape != e.shape:
        raise FemurFeError(f"stress {s.shape} and strain {e.shape} must have the same shape")
    return 0.5 * np.einsum("...ij,...ij->...", s, e)


def effective_strain(sed, young) -> np.ndarray:
    """Energy-equivalent (effective) strain ``sqrt(2 SED / E)`` (Pistoia 2002).

    Parameters
    ----------
    sed : (...) strain energy density, MPa
    young : (...) Young's modulus, MPa (broadcast against ``sed``), must be > 0
    """
    sed = np.asarray(sed, dtype=np.float64)
    young = np.asarray(young, dtype=np.float64)
    if np.any(~(young > 0)):
        raise FemurFeError("young must be > 0 MPa everywhere to compute the effective strain "
                           "(apply the material law's modulus floor)")
    # SED of an elastic body is >= 0; round-off can give -1e-30: clip those to 0
    return np.sqrt(np.clip(2.0 * sed / young, 0.0, None))


def element_fields(strain, stress, young) -> dict[str, np.ndarray]:
    """The derived per-element arrays written to result files.

    Parameters
    ----------
    strain, stress : (m, 3, 3) tensors at the element centroids
    young : (m,) MPa

    Returns
    -------
    dict with ``strain`` (m,6), ``stress`` (m,6) (Voigt xx,yy,zz,xy,yz,xz, tensor shear),
    ``von_mises`` (m,) MPa, ``principal_strain`` (m,3) descending, ``sed`` (m,) MPa,
    ``effective_strain`` (m,).
    """
    sed = strain_energy_density(stress, strain)
    return {
        "strain": voigt_from_tensor(strain),
        "stress": voigt_from_tensor(stress),
        "von_mises": von_mises(stress),
        "principal_strain": principal_values(strain),
        "sed": sed,
        "effective_strain": effective_strain(sed, young),
    }


def check_strain_limit(name: str, value: Any) -> float:
    """Validate a strain limit given as a positive fraction (e.g. 0.0073); return it as float.

    Raises :class:`LoadCaseError` for non-numbers, non-positive values (compressive limits
    are given as magnitudes), values that look like percentages (0.1 <= v < 100) and
    anything else outside (0, 0.1).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LoadCaseError(f"{name} must be a number (strain as a fraction, e.g. 0.0073), got {value!r}") from None
    if not math.isfinite(v):
        raise LoadCaseError(f"{name} must be finite, got {value!r}")
    if v < 0:
        raise LoadCaseError(f"{name}={v:g} is negative; give strain limits as positive magnitudes "
                            f"(compression too), e.g. {name}={abs(v):g}")
    if v == 0:
        raise LoadCaseError(f"{name} must be > 0 (a strain limit of 0 fails at any load)")
    if 0.1 <= v < 100:
        raise LoadCaseError(f"{name}={v:g} looks like a percentage; strain limits are fractions: "
                            f"use {name}={v / 100:g} for {v:g} %")
    if v >= 0.1:
        raise LoadCaseError(f"{name}={v:g} is not a plausible bone strain limit; expected a fraction "
                            "in (0, 0.1), e.g. 0.0073")
    return v
