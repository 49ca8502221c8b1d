"""Many load directions on one model: 12 sideways-fall directions vs one (target: <= 3x the time of one).

The matrix, the regions, the caps and the solver set-up are shared; each extra direction is
one more right-hand side plus the field recovery and the strength evaluation.
Run: ``python benchmarks/bench_loadcases.py``.
"""
from __future__ import annotations

import time

import femur_fe as ff
from femur_fe.analysis.prepare import prepare
from femur_fe.bone.model import Model
from femur_fe.studies.run import case_for


def main() -> None:
    files = ff.bundled_bone("femur", "osteoporotic")
    case = case_for(ff.load_case("loadcases/sideways_fall.toml"), ff.Specimen(bundled="femur"))
    model = Model.from_ct(ff.read_mesh(files.mesh), ff.read_ct(files.ct, unit="HU"), case.material,
                          outside="nearest")
    t0 = time.perf_counter()
    one = prepare(case, model).solve()
    t_one = time.perf_counter() - t0
    dirs = [{"adduction_deg": a, "internal_rotation_deg": r} for a in (0.0, 10.0, 20.0, 30.0)
            for r in (0.0, 15.0, 30.0)]
    t0 = time.perf_counter()
    res = prepare(case, model).solve_directions(dirs)
    t_12 = time.perf_counter() - t0
    print(f"bundled femur, {model.mesh.n_cells} tets, solver {one.solver.method}")
    print(f"{'run':22s} {'seconds':>8s}")
    print(f"{'1 direction':22s} {t_one:8.1f}")
    print(f"{'12 directions':22s} {t_12:8.1f}")
    print(f"ratio 12/1 = {t_12 / t_one:.2f} (target <= 3)")
    print("adduction  int.rot  strength N  stiffness N/mm")
    for d, r in zip(dirs, res):
        print(f"{d['adduction_deg']:9.0f} {d['internal_rotation_deg']:8.0f} {r.linear.strength_N:11.0f} "
              f"{r.stiffness_N_per_mm:15.0f}")


if __name__ == "__main__":
    main()
