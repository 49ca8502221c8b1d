"""Non-finite voxels of a NIfTI file, read from the raw data.

ITK's NIfTI reader (SimpleITK) returns NaN and inf voxels of floating-point NIfTI images as
0, so an image with missing data would be mapped as if it held 0 HU or 0 mg/cm^3 there.
:func:`nonfinite_voxels` parses the NIfTI-1/NIfTI-2 header (byte order, datatype, dimensions,
``vox_offset``) and looks at the stored values themselves. Only float32/float64 images can
hold non-finite values; other datatypes return None without reading the data.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

#: NIfTI datatype codes of the floating-point types that can hold NaN/inf
_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _header(raw: bytes) -> tuple[str, int, tuple[int, ...], int] | None:
    """(byte order, datatype, dims, vox_offset) of a NIfTI-1 or NIfTI-2 header, None if neither."""
    for order in ("<", ">"):
        size = struct.unpack(order + "i", raw[:4])[0]
        if size == 348 and len(raw) >= 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            datatype = struct.unpack(order + "h", raw[70:72])[0]
            vox_offset = int(struct.unpack(order + "f", raw[108:112])[0])
            return order, datatype, tuple(dim), vox_offset
        if size == 540 and len(raw) >= 540:
            datatype = struct.unpack(order + "h", raw[12:14])[0]
            dim = struct.unpack(order + "8q", raw[16:80])
            vox_offset = int(struct.unpack(order + "q", raw[168:176])[0])
            return order, datatype, tuple(dim), vox_offset
    return None


def nonfinite_voxels(path: str | os.PathLike) -> np.ndarray | None:
    """Boolean ``[i, j, k]`` mask of the NaN/inf voxels of the first volume of a ``.nii``/``.nii.gz``.

    None when the file is not a single-file floating-point NIfTI image (nothing to check) or
    its data is shorter than the header says (the image reader reports that).
    """
    try:
        return _nonfinite_voxels(Path(path))
    except (OSError, EOFError, struct.error):  # unreadable here: the image reader reports it
        return None


def _nonfinite_voxels(p: Path) -> np.ndarray | None:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rb") as fh:
        head = fh.read(540)
        parsed = _header(head) if len(head) >= 348 else None
        if parsed is None:
            return None
        order, datatype, dim, vox_offset = parsed
        if datatype not in _FLOAT_TYPES or dim[0] < 3:
            return None
        shape = tuple(max(int(d), 1) for d in dim[1:4])
        dtype = np.dtype(order + _FLOAT_TYPES[datatype])
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        if vox_offset <= len(head):
            data = head[vox_offset:] + fh.read(max(nbytes - (len(head) - vox_offset), 0))
        else:
            fh.read(vox_offset - len(head))
            data = fh.read(nbytes)
    if len(data) < nbytes:
        return None
    values = np.frombuffer(data, dtype=dtype, count=count)
    bad = ~np.isfinite(values)
    if not bad.any():
        return np.zeros(shape, dtype=bool)
    return np.ascontiguousarray(bad.reshape(shape[::-1]).transpose(2, 1, 0))


__all__ = ["nonfinite_voxels"]
