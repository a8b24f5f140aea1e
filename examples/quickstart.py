"""The quickstart figure (experiments/quickstart.toml) from Python: the residual-stream kernel
of paper-vit at n = 256 against depth, Monte Carlo points with their standard errors on the
theory line. Needs `pip install ./python matplotlib`.

    python examples/quickstart.py [OUT.png]
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import sigprop

# The experiment's settings: paper-vit, n = 256, 8 tokens, 64 outputs, 400 networks.
config = {"model.preset": "paper-vit", "model.width": 256, "inputs.tokens": 8, "model.n_out": 64}
mc = sigprop.simulate(config, samples=400, seed=0)
th = sigprop.theory(config)

pick = lambda df: df[(df.site == "resid") & (df.observable == "kernel_diag")].sort_values("layer")
m, t = pick(mc), pick(th)

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(t.layer, t.value, "-", color="C0", label="theory")
ax.errorbar(m.layer, m.value, yerr=m.stderr, fmt="o", color="C1", capsize=3, label="Monte Carlo (400 nets)")
ax.set_xlabel("layer ℓ")
ax.set_ylabel("residual kernel, mean diagonal")
ax.set_title("paper-vit, n = 256, pre-LN: resid kernel_diag")
ax.legend()
fig.tight_layout()
out = sys.argv[1] if len(sys.argv) > 1 else "quickstart_resid_kernel_diag.png"
fig.savefig(out, dpi=120)
print(f"{out}: {len(m)} layers, max |MC - theory| / stderr = "
      f"{((m.set_index('layer').value - t.set_index('layer').value).abs() / m.set_index('layer').stderr).max():.2f}")
