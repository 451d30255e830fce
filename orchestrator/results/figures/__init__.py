"""The paper's figures as functions of the reduced tables: each takes pandas frames (as
`open_sweep(path).curves()`, `.ensemble()`, `.training()`, `.snapshots()` and `.summary()`
give them) and returns a matplotlib Figure, drawn without pyplot: importing this package
chooses no backend and keeps no global state, so it works in a notebook as in a script.
A figure whose data are not there raises NothingToDraw (a JamsweepError) saying why.

    from orchestrator.results import open_sweep
    from orchestrator.results.figures import fig2
    sweep = open_sweep("results/demo")
    fig2(sweep.curves(), sweep.summary())          # shows itself in a notebook
    fig2(sweep.curves(), sweep.summary()).savefig("fig2.pdf")

Figures (arXiv 1901.01608): fig2 (test error, ensemble, early stopping, fit), fig4 (the
average of n nets), fig5 (output variance), fig6 (gradient, gap), fig7a, fig7b (||f||),
fig8 (several outputs), training_curves, nstar_vs_p and collapse (the jamming line N*(P),
when train_size is an axis), fig_compare (several sweeps), and fig9 / fig10,
drawn from the tables `orchestrator.results.boundaries.boundary_tables` computes from the
kept nets.
"""

from orchestrator.results.figures.boundary import fig9, fig10
from orchestrator.results.figures.compare import fig_compare, grid_labels
from orchestrator.results.figures.ensemble import fig4
from orchestrator.results.figures.error import fig2, fig8
from orchestrator.results.figures.jamming import collapse, nstar_vs_p
from orchestrator.results.figures.outputs import fig5, fig6, fig7a, fig7b
from orchestrator.results.figures.style import FORMATS, NothingToDraw, to_bytes
from orchestrator.results.figures.training import training_curves

__all__ = [
    "FORMATS",
    "NothingToDraw",
    "collapse",
    "fig10",
    "fig2",
    "fig4",
    "fig5",
    "fig6",
    "fig7a",
    "fig7b",
    "fig8",
    "fig9",
    "fig_compare",
    "grid_labels",
    "nstar_vs_p",
    "to_bytes",
    "training_curves",
]
