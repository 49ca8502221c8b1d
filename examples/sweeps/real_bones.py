"""Sweep over the shared real bones x bone states x therapy scenarios, with a strength-gain plot.

    python examples/sweeps/real_bones.py --out runs/real_bones [--workers 2] [--scheduler tcp://host:8786]

Bones (``/work/shared/data`` or ``$FEMUR_FE_SHARED/data``; see each folder's PROVENANCE.md):

* ``femur_gfxmorph/femur.stl``: a whole femur surface, cut 50 mm below the lesser
  trochanter (:func:`femur_fe.bone.cut_proximal_femur`), sideways fall
  (``loadcases/sideways_fall.toml``);
* ``lumbar_mean_clouthier/mean_L3.stl`` and ``lumbar_vhm_remus/L3_body.obj``: two L3
  vertebrae, axial compression (``loadcases/vertebral_compression.toml``).

Each surface is meshed with :func:`femur_fe.bone.tetmesh_from_surface` (tet4; 3 mm femur,
2.5 mm vertebra) and written once to ``OUT/meshes/``. These are geometries without CT, so
the element densities of each bone state are ASSUMED, from the same density model as the
bundled synthetic bones (:data:`femur_fe.bone.bundled.STATE_DENSITIES`): a cortical shell of
thickness ``cortex_factor x`` the default cortical thickness of the parametric bone
(:class:`femur_fe.bone.bundled.FemurParams` ``neck_cortex_mm``, :class:`~femur_fe.bone.bundled.VertebraParams`
``shell_thickness_mm``) at the cortical K2HPO4 density, and the trabecular density
inside, converted to ash density with Keyak 1994 (:func:`femur_fe.bone.ash_from_k2hpo4_keyak1994`).
They are stored as cell data ``density_<state>`` (g/cm^3 ash), which the sweep's pipeline
task reads for ``state = <state>``. This is a two-compartment illustration, not a
subject-specific density.

Scenarios: the femur uses ``loadcases/scenarios/regeneration_demo.toml`` as it is
(no_treatment, standard_care, regenerative_12mo; its comments give the sources and which
numbers are assumptions). The vertebrae use the same three ideas with the spine preset:
no_treatment = SWAN ``postmenopausal_spine`` (-2.0 %/yr), standard_care = +2.5 %/yr uniform
(the hip-fitted rate of the demo, an assumption for the spine), regenerative_12mo = a graft
at the vertebral body centre (peak +0.15 g/cm^3, 8 mm, 6 months) + trabecular +4 %/yr, all
hypothetical as in the demo.

Outputs: ``OUT/femur/`` and ``OUT/vertebra/`` (sweep folders with results.parquet/.csv),
``OUT/strength_gain.csv`` (gain of each scenario vs the baseline of the same bone and
state) and ``OUT/strength_gain.png``. Re-running resumes: finished tasks are not redone.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"
STATES = ("healthy", "osteopenic", "osteoporotic")

BONES = {
    "femur_gfxmorph": ("femur", SHARED / "femur_gfxmorph" / "femur.stl", 3.0),
    "L3_clouthier_mean": ("vertebra", SHARED / "lumbar_mean_clouthier" / "mean_L3.stl", 2.5),
    "L3_vhm_remus": ("vertebra", SHARED / "lumbar_vhm_remus" / "L3_body.obj", 2.5),
}

VERTEBRA_SCENARIOS = [
    {"name": "no_treatment", "months": 12.0, "density_type": "ash",
     "description": "postmenopausal spine loss, -2.0 %/yr (SWAN, Greendale 2012)",
     "operator": [{"type": "annual_change", "preset": "postmenopausal_spine"}]},
    {"name": "standard_care", "months": 12.0, "density_type": "ash",
     "description": "antiresorptive-like +2.5 %/yr uniform (the demo's hip-fitted rate; an assumption here)",
     "operator": [{"type": "annual_change", "percent_per_year": 2.5}]},
    {"name": "regenerative_12mo", "months": 12.0, "density_type": "ash",
     "description": "hypothetical graft at the vertebral body centre + systemic trabecular formation",
     "operator": [{"type": "injection", "landmark": "vertebral_body_centre", "radius_mm": 8.0,
                   "shape": "gaussian", "peak_gain_g_cm3": 0.15, "maturation_months": 6.0,
                   "ramp": "logistic"},
                  {"type": "annual_change", "percent_per_year": 4.0, "compartment": "trabecular",
                   "cortical_threshold_g_cm3": 0.5}]},
]


def state_densities(mesh, bone: str) -> dict[str, np.ndarray]:
    """Assumed two-compartment ash densities (g/cm^3) per state (see the module docstring)."""
    from femur_fe.bone.bundled import STATE_DENSITIES, FemurParams, VertebraParams
    from femur_fe.bone.calibration import ash_from_k2hpo4_keyak1994
    from femur_fe.therapy.scenarios import distance_to_triangles, periosteal_triangles

    tri = mesh.points[periosteal_triangles(mesh)]
    depth = distance_to_triangles(mesh.cell_centroids(), tri)
    base_t = FemurParams().neck_cortex_mm if bone == "femur" else VertebraParams().shell_thickness_mm
    out = {}
    for state in STATES:
        s = STATE_DENSITIES[bone][state]
        qct_mg = np.where(depth < s["cortex_factor"] * base_t, s["cortical"], s["trabecular"])
        out[state] = ash_from_k2hpo4_keyak1994(qct_mg / 1000.0)
    return out


def prepare_meshes(out: Path) -> dict[str, list[str]]:
    """Mesh the shared surfaces once (OUT/meshes/<name>.vtu with density_<state>); paths by bone."""
    import femur_fe as ff

    folder = out / "meshes"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[str]] = {"femur": [], "vertebra": []}
    for name, (bone, src, size) in BONES.items():
        if not src.exists():
            print(f"skipping {name}: {src} not found", file=sys.stderr)
            continue
        dst = folder / f"{name}.vtu"
        if not dst.exists():
            surf, _ = ff.bone.repair_surface(ff.read_surface(src))
            if bone == "femur":
                surf = ff.bone.cut_proximal_femur(surf, 50.0)
            mesh = ff.bone.tetmesh_from_surface(surf, element_size=size)
            dens = state_densities(mesh, bone)
            mesh = ff.Mesh(mesh.points, mesh.cells, mesh.cell_type, node_sets=mesh.node_sets,
                           cell_data={f"density_{k}": v for k, v in dens.items()})
            ff.write_mesh(dst, mesh)
            print(f"meshed {name}: {mesh.n_points} nodes, {mesh.n_cells} tets -> {dst}", file=sys.stderr)
        paths[bone].append(str(dst))
    return paths


def gain_table(tables):
    """Strength change (%) of each scenario vs the baseline of the same bone and state."""
    import pandas as pd

    df = pd.concat(tables, ignore_index=True)
    df = df[df["status"] == "ok"].copy()
    df["bone"] = [Path(m).stem for m in df["mesh"]]
    base = df[df["scenario"] == "baseline"].set_index(["bone", "state"])["strength_linear_N"]
    rows = []
    for _, r in df[df["scenario"] != "baseline"].iterrows():
        key = (r["bone"], r["state"])
        if key not in base.index:
            continue
        b = float(base.loc[key])
        rows.append({"bone": r["bone"], "state": r["state"], "scenario": r["scenario"],
                     "baseline_strength_N": b, "strength_N": float(r["strength_linear_N"]),
                     "strength_change_percent": 100.0 * (float(r["strength_linear_N"]) / b - 1.0),
                     "added_mass_g": float(r["added_mass_g"])})
    return pd.DataFrame(rows)


def plot_gain(gains, path: Path) -> Path:
    """Grouped bars: one panel per bone, states on the x axis, one bar per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from femur_fe.io import atomic_path

    bones = list(dict.fromkeys(gains["bone"]))
    scen = list(dict.fromkeys(gains["scenario"]))
    fig, axes = plt.subplots(1, len(bones), figsize=(4.2 * len(bones), 3.8), sharey=True, squeeze=False)
    width = 0.8 / max(len(scen), 1)
    colours = plt.get_cmap("tab10")
    for ax, bone in zip(axes[0], bones):
        sub = gains[gains["bone"] == bone]
        for j, sc in enumerate(scen):
            vals = [sub[(sub["state"] == st) & (sub["scenario"] == sc)]["strength_change_percent"] for st in STATES]
            y = [float(v.iloc[0]) if len(v) else np.nan for v in vals]
            ax.bar(np.arange(len(STATES)) + (j - (len(scen) - 1) / 2) * width, y, width, label=sc,
                   color=colours(j), edgecolor="black", lw=0.5)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(STATES)), STATES, rotation=15)
        ax.set_title(bone, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("linear strength change vs baseline (%)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Strength gain at 12 months by bone state (assumed state densities; see script)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--scheduler", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import distributed  # noqa: F401  (sets its logger levels on import: override after it)

    for name in ("distributed", "femur_fe.bone.mapping"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import femur_fe as ff
    from femur_fe.case.scenarios import load_scenarios
    from femur_fe.studies.sweep import BASELINE, SweepSpec, run_sweep

    out = Path(args.out)
    meshes = prepare_meshes(out)
    femur_scen = [s.to_dict() for s in load_scenarios(ROOT / "loadcases" / "scenarios" / "regeneration_demo.toml",
                                                      allow_other_keys=True)]
    runs = {"femur": ("sideways_fall.toml", femur_scen), "vertebra": ("vertebral_compression.toml",
                                                                      VERTEBRA_SCENARIOS)}
    tables = []
    for bone, (case_file, scenarios) in runs.items():
        if not meshes[bone]:
            continue
        case = ff.load_case(ROOT / "loadcases" / case_file).with_values({"solver.method": "direct"})
        spec = SweepSpec(name=f"real_{bone}", base=case, scenarios=scenarios, retries=0, timeout_s=1800,
                         parameters={"mesh": meshes[bone], "state": list(STATES),
                                     "scenario": [BASELINE] + [s["name"] for s in scenarios]})
        df = run_sweep(spec, out / bone, scheduler=args.scheduler, n_workers=args.workers, progress=True,
                       on_dashboard=lambda a: print(f"Dask dashboard: {a}", file=sys.stderr))
        bad = df[df["status"] != "ok"]
        for _, r in bad.iterrows():
            print(f"{bone}: task {r['task_id']} ({Path(r['mesh']).stem}, {r['state']}, {r['scenario']}) "
                  f"{r['status']}: {str(r['error']).splitlines()[0]}", file=sys.stderr)
        tables.append(df)
    gains = gain_table(tables)
    if gains.empty:
        print("no finished scenario/baseline pairs to plot", file=sys.stderr)
        return 1
    from femur_fe.io import write_text_atomic

    write_text_atomic(out / "strength_gain.csv", gains.to_csv(index=False))
    png = plot_gain(gains, out / "strength_gain.png")
    print(gains.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
