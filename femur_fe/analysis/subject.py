"""The person a bone belongs to: sex, body mass and height for fall force and classification."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import LoadCaseError
from ..io.tables import Table
from .risk import fall_impact_force

SEXES = ("female", "male")


@dataclass(frozen=True)
class Subject:
    """Subject data used for the factor of risk and the fragility classification.

    Attributes
    ----------
    sex : ``"female"`` or ``"male"`` (selects the Kopperdahl 2014 thresholds)
    body_mass_kg, height_cm : for the sideways-fall impact force (None: no factor of risk)
    soft_tissue_mm : trochanteric soft-tissue thickness, mm (optional attenuation)
    """

    sex: str
    body_mass_kg: float | None = None
    height_cm: float | None = None
    soft_tissue_mm: float | None = None

    def __post_init__(self) -> None:
        if self.sex not in SEXES:
            raise LoadCaseError(f"subject sex must be one of {SEXES}, got {self.sex!r}")
        if (self.body_mass_kg is None) != (self.height_cm is None):
            raise LoadCaseError("give both body_mass_kg and height_cm (for the fall impact force), or neither")

    def impact_force(self):
        """Sideways-fall impact force (:func:`femur_fe.analysis.risk.fall_impact_force`) or None."""
        if self.body_mass_kg is None:
            return None

        return fall_impact_force(self.body_mass_kg, self.height_cm, self.soft_tissue_mm)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "[subject]") -> "Subject | None":
        """The subject of a ``[subject]`` table (None for no table)."""
        if d is None:
            return None
        t = Table(d, where, "", LoadCaseError, schema="subject [subject]")
        sex = t.get("sex", "str", choices=SEXES)
        mass = t.get("body_mass_kg", "float", None, lo=20.0, hi=300.0)
        height = t.get("height_cm", "float", None, lo=100.0, hi=250.0)
        tissue = t.get("soft_tissue_mm", "float", None, lo=0.0, hi=200.0)
        t.finish()
        return cls(sex, mass, height, tissue)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
