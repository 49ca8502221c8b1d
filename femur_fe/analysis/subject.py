"""The person a bone belongs to: sex, body mass and height for fall force and classification."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import LoadCaseError
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
        if d is None:
            return None
        allowed = {"sex", "body_mass_kg", "height_cm", "soft_tissue_mm"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise LoadCaseError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if "sex" not in d:
            raise LoadCaseError(f"{where}: sex is required ('female' or 'male')")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
