"""The tables and pre-registered rules (R1-R3) of a ``benchmarks/heldout_uq.py --refine-discrepancy`` run.

Run: ``PYTHONPATH=$PWD python docs/figures/session8_2026-12-08/rules.py OUT/results.json``. Prints the NRMSE per
family and dose, the Mondrian coverage at 90 % per network, how much the refinement did, and per network the
comparison the rules of ``preregistration.txt`` read.
"""

import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.heldout_uq import summarise  # noqa: E402

results = json.loads(Path(sys.argv[1]).read_text())
summary = summarise(results)
nets = list(results["settings"]["unrolled"])
print("NRMSE")
for (fam, dose), s in sorted(summary.items()):
    print(fam, dose, {k.replace(" (mean)", ""): round(v, 4) for k, v in s["nrmse"].items()})
print("Mondrian object cov90 / CE / lesion90 / ROI conformal")
for (fam, dose), s in sorted(summary.items()):
    for n in [*nets, "denoiser"]:
        d = s["methods"].get(f"{n}: Mondrian")
        if d:
            roi = s["methods"].get(f"{n}: ROI conformal", {}).get("roi_cov90", float("nan"))
            print(
                f"{fam:7s} {dose:5g} {n:60s} obj {d['object_cov90']:.3f} ce {d['object_ce']:.3f} "
                f"les {d.get('lesions_cov90', float('nan')):.3f} w90 {d['object_width90']:.3f} roi {roi:.3f}"
            )
stats = collections.defaultdict(list)
for row in results["cases"].values():
    for n, v in row.get("discrepancy_refinement", {}).items():
        stats[(row["family"], row["dose"], n)].append((v["iterations_mean"], v["z_start_mean"], v["reached_fraction"]))
print("refinement: mean iterations, mean z before, reached fraction")
for k, v in sorted(stats.items()):
    print(k, [round(sum(c) / len(c), 3) for c in zip(*v)])
for n in (n for n in nets if "discrepancy" not in n):
    rn = f"{n} + discrepancy EM"
    print("==", n)
    for (fam, dose), s in sorted(summary.items()):
        nr = s["nrmse"]
        a, b = nr[f"{n} (mean)"], nr[f"{rn} (mean)"]
        osem, mapr = nr["OSEM+optimal filter"], nr["MAP-RDP (tuned)"]
        ma, mb = s["methods"][f"{n}: Mondrian"], s["methods"][f"{rn}: Mondrian"]
        print(
            f"{fam:7s} {dose:5g} net {a:.4f} refined {b:.4f} (d {b - a:+.4f}) OSEM {osem:.4f} MAP {mapr:.4f} | "
            f"R1 <=OSEM {b <= osem}; gap to MAP {a - mapr:+.4f} -> {b - mapr:+.4f} | "
            f"cov {ma['object_cov90']:.3f}->{mb['object_cov90']:.3f} ce {ma['object_ce']:.3f}->{mb['object_ce']:.3f}"
        )
