"""``femur-fe verify le10|cantilever|lame``: run a verification case and print the result against its
reference (:mod:`femur_fe.fe.verification`)."""
from __future__ import annotations

import argparse
import json

from ..fe.verification import run_cantilever, run_lame, run_le10


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="run a physics verification case and print the result vs the reference",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["le10", "cantilever", "lame"])
    p.add_argument("--refine", type=int, default=1,
                   help="mesh refinement factor (1 = the unit-test mesh; default %(default)s)")
    p.add_argument("--method", default="auto", choices=["auto", "direct", "amg"],
                   help="linear solver (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    r = max(1, int(args.refine))
    if args.case == "le10":
        res = run_le10((6 * r, 12 * r, 4 * r), method=args.method)
        line = (f"NAFEMS LE10 (tet10, {res['n_dofs']} DOFs): sigma_yy(D) = {res['sigma_yy_D']:.4f} MPa, "
                f"reference {res['reference']:.2f} MPa, error {100 * res['rel_error']:.2f} % "
                f"(node average of centroid stresses: {res['sigma_yy_D_node_average']:.4f} MPa)")
        ok = res["rel_error"] <= 0.03
    elif args.case == "lame":
        res = run_lame(4 * r, method=args.method)
        err = abs(res["u_r_bore"] / res["u_r_bore_exact"] - 1)
        line = (f"Lamé cylinder (tet10, {res['n_dofs']} DOFs): u_r(a) = {res['u_r_bore']:.6e} mm, exact "
                f"{res['u_r_bore_exact']:.6e} ({100 * err:.3f} %); sigma_theta(a) = {res['sigma_theta_bore']:.4f} MPa, "
                f"exact {res['sigma_theta_bore_exact']:.4f}; L2 error {res['l2_error']:.2e}")
        ok = err <= 0.01
    else:
        res = run_cantilever(2 * r, method=args.method)
        line = (f"Cantilever (tet10, nu = 0, {res['n_dofs']} DOFs): tip deflection {res['tip_deflection']:.6f} mm, "
                f"Timoshenko PL^3/3EI + PL/(kGA) = {res['tip_deflection_timoshenko']:.6f} mm, "
                f"error {100 * res['rel_error']:.4f} %")
        ok = res["rel_error"] <= 0.001
    print(json.dumps(res, indent=2) if args.json else line)
    print(f"solver: {res['report']['method']}, {res['report']['solve_seconds']:.2f} s solve")
    print("PASS" if ok else "FAIL (outside the verification tolerance)")
    return 0 if ok else 1
