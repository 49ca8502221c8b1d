"""Fall impact force, factor of risk and strength classification.

* :func:`fall_impact_force` — peak force on the greater trochanter in a sideways fall
  from standing height, and its soft-tissue-attenuated value.
* :func:`factor_of_risk` — Phi = applied load / strength; fracture expected for Phi > 1
  (Keaveny & Bouxsein 2008; Dufour et al. 2012) **[V]**.
* :func:`classify_strength` — "fragile bone strength" thresholds of Kopperdahl et al.
  2014 **[V]** (hip: women <= 3000 N, men <= 3500 N; spine: women <= 4500 N, men <= 6500 N)
  plus, for the hip, the Keaveny & Bouxsein 2008 bands **[V]** ("very low" < 2000 N,
  "moderately low" 2000-4000 N).
* :func:`summary_fields` — the strength/risk entries of ``summary.json``.

Spine factor of risk: a vertebral load model (standing / bending / lifting, Bouxsein
2006) is not included — its load magnitudes are only known from memory [M]
(Bouxsein et al. 2006, J Bone Miner Res 21:1475). :func:`factor_of_risk` accepts any load the user supplies.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import FemurFeError

log = logging.getLogger(__name__)

#: gravitational acceleration used by the fall-force regression, m/s^2 (9.81 reproduces the
#: spot value 65 kg, 165 cm -> 5183 N of that regression)
G_STANDARD = 9.81

# Kopperdahl et al. 2014 (JBMR 29:570) fragile-bone-strength thresholds, N, inclusive [V]
FRAGILE_THRESHOLDS_N: dict[tuple[str, str], float] = {
    ("hip", "female"): 3000.0,
    ("hip", "male"): 3500.0,
    ("spine", "female"): 4500.0,
    ("spine", "male"): 6500.0,
}
# Keaveny & Bouxsein 2008 (JBMR 23:1541) femoral strength bands for a sideways fall [V]
HIP_BANDS_N = ((2000.0, "very low"), (4000.0, "moderately low"))

_SEX = {"female": "female", "f": "female", "woman": "female", "women": "female",
        "male": "male", "m": "male", "man": "male", "men": "male"}
_SITE = {"hip": "hip", "femur": "hip", "proximal_femur": "hip", "spine": "spine", "vertebra": "spine"}


def _positive(name: str, value: Any, unit: str, lo: float, hi: float, hint: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise FemurFeError(f"{name} must be a number in {unit}, got {value!r}") from None
    if not math.isfinite(v) or not (lo <= v <= hi):
        raise FemurFeError(f"{name}={value!r} is outside the plausible range [{lo:g}, {hi:g}] {unit}{hint}")
    return v


@dataclass(frozen=True)
class ImpactForce:
    """Result of :func:`fall_impact_force` (forces in N)."""

    peak_N: float
    attenuated_N: float | None
    body_mass_kg: float
    height_cm: float
    soft_tissue_mm: float | None
    attenuation_N_per_mm: float
    model: str = "vandenKroonenberg1995 regression, soft-tissue attenuation (Robinovitch 1995) [M]"

    @property
    def force_N(self) -> float:
        """The attenuated force when soft tissue was given, else the peak force."""
        return self.attenuated_N if self.attenuated_N is not None else self.peak_N

    def to_dict(self) -> dict:
        d = asdict(self)
        d["force_N"] = self.force_N
        return d


def fall_impact_force(body_mass_kg: float, height_cm: float, soft_tissue_mm: float | None = None, *,
                      attenuation_N_per_mm: float = 71.0) -> ImpactForce:
    """Impact force on the hip in a sideways fall from standing height.

    ``F_peak = 8.25 g m sqrt(h / 170)`` (m in kg, h in cm, g = 9.81 m/s^2, N), the
    regression after van den Kroonenberg et al. 1995 used by Keaveny/Bouxsein and the
    Framingham factor-of-risk studies; ``F_att = F_peak - 71 N/mm * t`` with ``t`` the
    trochanteric soft-tissue thickness (Robinovitch et al. 1995).

    Evidence: **[M]** — the formula (after van den Kroonenberg et al. 1995, J Biomech Eng
    117:309) and the 71 N/mm (Robinovitch et al. 1995) are not checked against the papers.
    What is verified **[V]** is that Keaveny & Bouxsein 2008 estimated the fall
    force from subject height and weight and that Dufour et al. 2012 used a "peak" force
    and an "attenuated" force that accounts for trochanteric soft tissue; the coefficients
    themselves could not be checked against the papers. Spot value from the formula
    **[C]**: 65 kg, 165 cm -> 5183 N.

    Parameters
    ----------
    body_mass_kg : body mass, kg (20-300)
    height_cm : standing height, cm (100-250)
    soft_tissue_mm : trochanteric soft-tissue thickness, mm (optional)
    attenuation_N_per_mm : force reduction per mm of soft tissue, N/mm

    Returns
    -------
    ImpactForce with ``peak_N``, ``attenuated_N`` (None without soft tissue) and ``force_N``.
    """
    m = _positive("body_mass_kg", body_mass_kg, "kg", 20.0, 300.0)
    h = _positive("height_cm", height_cm, "cm", 100.0, 250.0,
                  " (give the height in cm, e.g. 165, not metres)" if 0 < float(height_cm) < 3 else "")
    k = _positive("attenuation_N_per_mm", attenuation_N_per_mm, "N/mm", 0.0, 1000.0)
    peak = 8.25 * G_STANDARD * m * math.sqrt(h / 170.0)
    att = None
    t = None
    if soft_tissue_mm is not None:
        t = _positive("soft_tissue_mm", soft_tissue_mm, "mm", 0.0, 200.0)
        att = peak - k * t
        if att <= 0:
            raise FemurFeError(f"soft_tissue_mm={t:g} mm attenuates the whole peak force ({peak:.0f} N) with "
                               f"{k:g} N/mm; the linear attenuation model does not apply (check that the "
                               "thickness is in mm)")
    out = ImpactForce(peak, att, m, h, t, k)
    log.info("fall impact force: peak %.0f N, attenuated %s (mass %.1f kg, height %.1f cm, soft tissue %s mm)",
             peak, "n/a" if att is None else f"{att:.0f} N", m, h, t)
    return out


def factor_of_risk(load_N: float, strength_N: float) -> float:
    """Phi = applied load / strength (both N, > 0); fracture expected when Phi > 1 [V]."""
    f = _positive("load_N", load_N, "N", 1e-9, 1e6)
    s = _positive("strength_N", strength_N, "N", 1e-9, 1e6)
    return f / s


@dataclass(frozen=True)
class Classification:
    """Strength classification against the Kopperdahl 2014 thresholds."""

    label: str  # "fragile" | "not fragile"
    strength_N: float
    threshold_N: float
    site: str
    sex: str
    band: str | None  # Keaveny & Bouxsein 2008 hip band, None for the spine
    strength_source: str | None = None
    source: str = ("Kopperdahl et al. 2014 JBMR 29:570 fragile bone strength (<= threshold); "
                   "hip bands Keaveny & Bouxsein 2008 JBMR 23:1541")

    def to_dict(self) -> dict:
        return asdict(self)


def classify_strength(strength_N: float, site: str, sex: str, *, strength_source: str | None = None
                      ) -> Classification:
    """Classify a bone strength as "fragile" (<= threshold) or "not fragile".

    Thresholds (Kopperdahl et al. 2014) **[V]**: hip 3000 N women / 3500 N men; spine
    4500 N women / 6500 N men. For the hip the Keaveny & Bouxsein 2008 band is added as
    extra information **[V]**: "very low" (< 2000 N), "moderately low" (2000-4000 N) or
    "not low" (>= 4000 N).

    The thresholds were established with nonlinear (BCT/VirtuOst) finite-element
    strengths; applying them to a linear-criterion strength is an approximation, so
    pass ``strength_source`` ("nonlinear" / "linear:<criterion>") to record which it is.
    """
    s = _positive("strength_N", strength_N, "N", 0.0, 1e6)
    site_k = _SITE.get(str(site).lower())
    if site_k is None:
        raise FemurFeError(f"site must be 'hip' or 'spine' (aliases {sorted(_SITE)}), got {site!r}")
    sex_k = _SEX.get(str(sex).lower())
    if sex_k is None:
        raise FemurFeError(f"sex must be 'female' or 'male', got {sex!r}")
    thr = FRAGILE_THRESHOLDS_N[(site_k, sex_k)]
    band = None
    if site_k == "hip":
        band = "not low"
        for limit, name in HIP_BANDS_N:
            if s < limit:
                band = name
                break
    label = "fragile" if s <= thr else "not fragile"
    return Classification(label, s, thr, site_k, sex_k, band, strength_source)


def summary_fields(*, linear=None, nonlinear=None, site: str | None = None, sex: str | None = None,
                   impact=None, reference: str = "nonlinear") -> dict[str, Any]:
    """Strength and risk entries of ``summary.json``.

    Parameters
    ----------
    linear : :class:`femur_fe.analysis.failure.LinearStrength` or None
    nonlinear : :class:`femur_fe.fe.nonlinear.NonlinearResult` or None (a result that reached
        neither its peak nor its displacement endpoint gives ``strength_nonlinear_N = None``)
    site, sex : for :func:`classify_strength` (both needed to classify)
    impact : :class:`ImpactForce`, or a load in N, for the factor of risk (optional)
    reference : which strength the factor of risk and the classification use: ``"nonlinear"``
        (the nonlinear strength when given and reached, else the linear one) or ``"linear"``
        (always the linear one; the nonlinear strength is still reported). Load cases set it
        in ``[failure] reference_strength``.

    Returns
    -------
    dict with ``strength_linear_N``, ``strength_nonlinear_N``, ``criterion`` {name,
    parameters}, ``factor_of_risk``, ``classification`` (dict or None), plus
    ``strength_used`` and ``impact_force`` describing the inputs of the last two, and
    ``reference_strength``.
    """
    if reference not in ("linear", "nonlinear"):
        raise FemurFeError(f'reference must be "linear" or "nonlinear", got {reference!r}')
    out: dict[str, Any] = {
        "strength_linear_N": None, "strength_nonlinear_N": None, "criterion": None,
        "factor_of_risk": None, "classification": None, "strength_used": None, "impact_force": None,
        "reference_strength": reference,
    }
    strength, source = None, None
    if linear is not None:
        out["strength_linear_N"] = float(linear.strength_N)
        out["criterion"] = {"name": linear.criterion, "parameters": dict(linear.parameters)}
        strength, source = float(linear.strength_N), f"linear:{linear.criterion}"
    if nonlinear is not None:
        nl_strength = nonlinear.strength_N
        out["strength_nonlinear_N"] = nl_strength
        out["nonlinear"] = {"converged": bool(nonlinear.converged), "peak_reached": bool(nonlinear.peak_reached),
                            "strength_definition": nonlinear.strength_definition,
                            "endpoint_mm": nonlinear.endpoint_mm,
                            "endpoint_reached": bool(nonlinear.endpoint_reached),
                            "characteristic_length_mm": nonlinear.report.get("characteristic_length_mm"),
                            "endpoint_percent": nonlinear.report.get("endpoint_percent"),
                            "n_steps": len(nonlinear.steps), "yield": nonlinear.report.get("yield")}
        if nl_strength is not None and (reference == "nonlinear" or strength is None):
            strength, source = nl_strength, "nonlinear"
    if reference == "nonlinear" and source is not None and source != "nonlinear":
        out["strength_used_note"] = ("this case refers the factor of risk and the classification to the nonlinear "
                                     "strength (the thresholds are nonlinear FE strengths), which was not run or not "
                                     "reached; the linear strength was used: run with --nonlinear")
    if strength is not None:
        out["strength_used"] = source
        if impact is not None:
            load = impact.force_N if isinstance(impact, ImpactForce) else float(impact)
            out["factor_of_risk"] = factor_of_risk(load, strength)
            out["impact_force"] = impact.to_dict() if isinstance(impact, ImpactForce) else {"force_N": load}
        if site is not None and sex is not None:
            out["classification"] = classify_strength(strength, site, sex, strength_source=source).to_dict()
        missing = not_computed(site, sex, impact)
        if missing:
            out["not_computed"] = missing
    return out


#: subject data -> the ``femur-fe run`` option and the ``[subject]`` key that give it
SUBJECT_INPUTS = {"sex": ("--sex", "sex"), "body_mass_kg": ("--mass", "body_mass_kg"),
                  "height_cm": ("--height", "height_cm")}


def not_computed(site: str | None, sex: str | None, impact) -> dict[str, dict[str, Any]]:
    """Why the classification and the factor of risk of a strength were not computed.

    Returns ``{quantity: {"needs": [subject keys], "reason": text}}`` for each of
    ``classification`` and ``factor_of_risk`` that the given inputs do not allow (empty when
    both were computed). ``needs`` lists the subject data that would allow it (keys of
    :data:`SUBJECT_INPUTS`); it is empty when no subject data can (no fall impact model of the spine).
    """
    out: dict[str, dict[str, Any]] = {}
    if sex is None:
        out["classification"] = {
            "needs": ["sex"],
            "reason": "the fragility thresholds (Kopperdahl et al. 2014) depend on sex: give --sex female|male "
                      "(femur-fe run) or [subject] sex"}
    if impact is None:
        if site == "hip":
            needs = ([] if sex is not None else ["sex"]) + ["body_mass_kg", "height_cm"]
            out["factor_of_risk"] = {
                "needs": needs,
                "reason": "the factor of risk divides the sideways-fall impact force, computed from body mass and "
                          f"height, by the strength: give {', '.join(SUBJECT_INPUTS[k][0] for k in needs)} "
                          f"(femur-fe run) or [subject] {', '.join(SUBJECT_INPUTS[k][1] for k in needs)}"}
        else:
            out["factor_of_risk"] = {"needs": [], "reason": "no fall impact force model for this site (the factor "
                                                            "of risk is computed for the hip only)"}
    return out
