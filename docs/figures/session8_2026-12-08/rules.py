"""Evaluate the pre-registered rules R1-R3 on a heldout_uq results.json with refined rows."""
import json, sys, collections, importlib.util
spec = importlib.util.spec_from_file_location("h", "/work/main/benchmarks/heldout_uq.py"); h = importlib.util.module_from_spec(spec); spec.loader.exec_module(h)
r = json.load(open(sys.argv[1]))
S = h.summarise(r)
nets = [n for n in r["settings"]["unrolled"]]
print("NRMSE")
for (fam, dose), s in sorted(S.items()):
    print(fam, dose, {k.replace(" (mean)", ""): round(v, 4) for k, v in s["nrmse"].items()})
print("Mondrian object cov90 / CE / lesion90 / ROI conformal")
for (fam, dose), s in sorted(S.items()):
    for n in nets + ["denoiser"]:
        d = s["methods"].get(f"{n}: Mondrian")
        if d:
            roi = s["methods"].get(f"{n}: ROI conformal", {}).get("roi_cov90", float('nan'))
            print(f"{fam:7s} {dose:5g} {n:60s} obj {d['object_cov90']:.3f} ce {d['object_ce']:.3f} les {d.get('lesions_cov90', float('nan')):.3f} w90 {d['object_width90']:.3f} roi {roi:.3f}")
# refinement stats
st = collections.defaultdict(list)
for row in r["cases"].values():
    for n, v in row.get("discrepancy_refinement", {}).items():
        st[(row["family"], row["dose"], n)].append((v["iterations_mean"], v["z_start_mean"], v["reached_fraction"]))
print("refinement: mean iterations, mean z before, reached fraction")
for k, v in sorted(st.items()):
    print(k, [round(sum(c)/len(c), 3) for c in zip(*v)])
# rules
base = [n for n in nets if "discrepancy" not in n]
for n in base:
    rn = f"{n} + discrepancy EM"
    print("==", n)
    for (fam, dose), s in sorted(S.items()):
        nr = s["nrmse"]; a, b = nr[f"{n} (mean)"], nr[f"{rn} (mean)"]
        osem, mapr = nr["OSEM+optimal filter"], nr["MAP-RDP (tuned)"]
        ma, mb = s["methods"][f"{n}: Mondrian"], s["methods"][f"{rn}: Mondrian"]
        print(f"{fam:7s} {dose:5g} net {a:.4f} refined {b:.4f} (d {b-a:+.4f}) OSEM {osem:.4f} MAP {mapr:.4f} | R1 <=OSEM {b<=osem}; gap to MAP {a-mapr:+.4f} -> {b-mapr:+.4f} | cov {ma['object_cov90']:.3f}->{mb['object_cov90']:.3f} ce {ma['object_ce']:.3f}->{mb['object_ce']:.3f}")
