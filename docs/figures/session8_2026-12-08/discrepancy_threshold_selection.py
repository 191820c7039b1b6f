import sys, math, torch
from petuq_sirf.recon.em import em_update
from petuq_sirf.recon.family_data import family_low_dose_set
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model
torch.set_num_threads(2)

def deviance(y, mu):
    mu = mu.clamp_min(1e-12)
    t = torch.where(y > 0, y * torch.log(y / mu) - y + mu, mu)
    return 2 * t

def expected_deviance(mu):
    mu = mu.clamp_min(1e-12)
    out = 1 + 1 / (6 * mu) + 1 / (6 * mu**2)
    small = mu < 30
    if small.any():
        m = mu[small]
        k = torch.arange(0, 120, dtype=torch.float64)
        m64 = m.double()[:, None]
        logp = k * torch.log(m64) - m64 - torch.lgamma(k + 1)
        d = torch.where(k > 0, k * torch.log(k.clamp_min(1) / m64) - k + m64, m64)
        out[small] = (2 * (torch.exp(logp) * d).sum(1)).float()
    return out

layout = SinogramLayout(get_scanner("test-2d")); image = ImageGeometry.for_layout(layout)
geo = geometric_model(layout, image, 4.0)
name = sys.argv[1] if len(sys.argv) > 1 else "fbsem32y"
net, post = load_network("unrolled", name)[:2]
R = 3; K = 60; ZS = (0.0, -1.0, -2.0, -3.0); acc = {}
fams = ["thorax", "texture", "ellipses"]
for counts in (5e4, 1e5, 1e6):
    cal = family_low_dose_set(layout, image, fams, "calibration", 3, counts, geo, start=700)
    for i in range(len(cal)):
        model = geo.with_terms(cal.multiplicative[i], cal.additive[i])
        truth, obj = cal.truth[i], cal.regions[i]["object"]
        g = torch.Generator().manual_seed(1000 + i)
        expd = model.forward(truth)
        ys = torch.poisson(expd.expand(R, *expd.shape).contiguous(), generator=g)
        x0 = osem_realisations(model, ys, 10, 1)
        sens = model.sensitivity()
        rows = []
        for r in range(R):
            x = predict_unrolled(net, model, ys[r], x0[r], post, 4, seed=r).mean
            nr, dv = [], []
            for k in range(K + 1):
                mu = model.forward(x)
                D = float(deviance(ys[r], mu).sum()); E = float(expected_deviance(mu).sum())
                nr.append(float(((x - truth)[obj] ** 2).sum().sqrt() / (truth[obj] ** 2).sum().sqrt()))
                dv.append((D - E) / math.sqrt(2 * E))
                x = em_update(model, ys[r], x, sens)
            for z in ZS:
                ks = next((k for k in range(K + 1) if dv[k] <= z), K)
                acc.setdefault((counts, z), []).append(nr[ks])
            acc.setdefault((counts, 'net'), []).append(nr[0])
            kstop = next((k for k in range(K + 1) if dv[k] <= 0), K)
            kbest = min(range(K + 1), key=lambda k: nr[k])
            rows.append((nr[0], dv[0], kstop, nr[kstop], kbest, nr[kbest], dv[kbest]))
        m = [sum(c) / R for c in zip(*rows)]
        print(f"{counts:8.0e} {fams[i // 3]:9s} net {m[0]:.3f} z0 {m[1]:6.2f} | stop k {m[2]:4.1f} nrmse {m[3]:.3f} | best k {m[4]:4.1f} nrmse {m[5]:.3f} z {m[6]:6.2f}", flush=True)

for key, v in sorted(acc.items(), key=str):
    print(key, f"{sum(v)/len(v):.4f}")
for z in ZS + ("net",):
    print(z, f"{sum(sum(acc[(c, z)])/len(acc[(c, z)]) for c in (5e4,1e5,1e6))/3:.4f}")
