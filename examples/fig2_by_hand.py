# %% [markdown]
# # The paper's Fig. 2 by hand, from a finished sweep
#
# A notebook in percent format (open it in Jupyter with jupytext, or in VS Code / PyCharm as
# cells, or run it as a script). It starts from a sweep's raw files, through
# `orchestrator.results.open_sweep`, and rebuilds Fig. 2 of Geiger et al. (arXiv 1901.01608)
# with pandas and numpy only: the mean test error of single nets against their number of
# weights N, the error of the ensemble average f_bar over seeds, and the jamming point N*.
# `jamsweep reduce` computes the same (curves.parquet, summary.json); the last cell compares.
#
# Run a sweep first, e.g. `jamsweep submit examples/breast_cancer.yaml --num-cpus 2`; then
# `SWEEP` below is its name (looked up under ./results, or $JAMSWEEP_RESULTS) or its path.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from orchestrator.results import open_sweep

SWEEP = os.environ.get("JAMSWEEP_SWEEP", "breast_cancer")
FIGURE = Path(os.environ.get("JAMSWEEP_FIGURE", "fig2_by_hand.png"))
sweep = open_sweep(SWEEP)
sweep

# %% [markdown]
# ## Which runs fit their training set
# `metrics` has one row per finished run; `converged` says it reached zero hinge loss (every
# Delta <= delta_tol) within the step budget. The manifest lists every run, finished or not.

# %%
manifest = sweep.manifest()[["arch", "width", "seed", "run_id", "n_params", "label_map"]]
metrics = sweep.metrics(columns=["run_id", "converged", "steps", "test_error"])
runs = manifest.merge(metrics, on="run_id", how="left")
print(manifest["label_map"].iloc[0])
runs.groupby(["arch", "n_params"]).converged.agg(["sum", "size"])

# %% [markdown]
# ## N*: the jamming point
# The smallest N from which this width and every wider one have all their runs converged
# (a width with a run that has not finished is not jammed).


# %%
def jamming_point(per_width: pd.DataFrame) -> float:
    """per_width: one row per width of one arch, sorted by N, with `all_converged`."""
    n_star = np.nan
    for n, ok in zip(per_width["n_params"][::-1], per_width["all_converged"][::-1], strict=True):
        if not ok:
            break
        n_star = n
    return n_star


widths = (
    runs.assign(done=runs["converged"].fillna(False).astype(bool))
    .groupby(["arch", "width", "n_params"], as_index=False)
    .agg(all_converged=("done", "all"))
    .sort_values(["arch", "n_params"])
)
n_star = {arch: jamming_point(g) for arch, g in widths.groupby("arch")}
n_star

# %% [markdown]
# ## Single nets and the ensemble average, from the outputs f
# The final outputs on the test set (`step="final"`: each run's last step). An error is
# y f <= 0 for one output (f = 0 counts as an error), argmax f != label for several. The
# ensemble f_bar averages f over the converged seeds of a width, sample by sample.

# %%
test = sweep.logits(
    split="test", step="final", columns=["arch", "width", "seed", "run_id", "sample", "label", "f"]
)


def errors(f: np.ndarray, label: np.ndarray) -> np.ndarray:
    if f.ndim == 1:
        return (f * label <= 0).astype(float)
    return (f.argmax(axis=1) != label).astype(float)


rows = []
for (arch, width), group in test.groupby(["arch", "width"]):
    by_run = {rid: g.sort_values("sample") for rid, g in group.groupby("run_id")}
    f = {rid: np.stack(g["f"].to_numpy()).astype(float) for rid, g in by_run.items()}
    label = next(iter(by_run.values()))["label"].to_numpy()
    single = [errors(f[rid], label).mean() for rid in f]
    done = runs[(runs.arch == arch) & (runs.width == width) & runs.converged.eq(True)]
    members = [rid for rid in done["run_id"] if rid in f]
    ensemble = errors(np.mean([f[r] for r in members], axis=0), label).mean() if members else np.nan
    n = int(runs.loc[(runs.arch == arch) & (runs.width == width), "n_params"].iloc[0])
    rows.append(
        {
            "arch": arch,
            "width": width,
            "n_params": n,
            "test_error_mean": np.mean(single),
            "test_error_std": np.std(single),
            "ens_test_error": ensemble,
        }
    )
by_hand = pd.DataFrame(rows).sort_values(["arch", "n_params"]).reset_index(drop=True)
by_hand

# %% [markdown]
# ## Fig. 2
# Test error against N on a log axis: the single nets (mean and spread over seeds) peak near
# N* and decay beyond it; the ensemble average of the converged nets lies below and is flatter.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for arch, g in by_hand.groupby("arch"):
    ax.errorbar(g.n_params, g.test_error_mean, yerr=g.test_error_std, fmt="o-", label=f"{arch}")
    ax.plot(g.n_params, g.ens_test_error, "s--", label=f"{arch}: ensemble of converged seeds")
    if np.isfinite(n_star[arch]):
        ax.axvline(n_star[arch], color="grey", ls=":", label=f"{arch}: N* = {n_star[arch]:.0f}")
ax.set_xscale("log")
ax.set_xlabel("N (weights)")
ax.set_ylabel("test error")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIGURE, dpi=120)
print(f"wrote {FIGURE}")

# %% [markdown]
# ## The same numbers from `jamsweep reduce`
# curves.parquet and summary.json, when the sweep has been reduced (`submit` reduces at the
# end), hold what was computed above.

# %%
try:
    curves = sweep.curves()
    summary = sweep.summary()
except Exception as exc:  # not reduced yet: `jamsweep reduce SWEEP`
    print(exc)
else:
    check = by_hand.merge(curves, on=["arch", "width"], suffixes=("", "_reducer"))
    for column in ("test_error_mean", "test_error_std", "ens_test_error"):
        assert np.allclose(check[column], check[f"{column}_reducer"], equal_nan=True), column
    for arch, n in n_star.items():
        assert (summary.n_star.get(arch) is None and np.isnan(n)) or summary.n_star[arch] == n
    print(f"by hand == jamsweep reduce, for {len(check)} widths; N* = {summary.n_star}")
