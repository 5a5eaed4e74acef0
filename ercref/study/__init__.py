"""ercref.study: teaching and experiment tools built on the engine (ercref.lm) and the core.

    bandits      toy K-armed and contextual bandits for notebook 01 (one update = the core objective)
    experiments  multi-seed arm runner over the engine's Trainer (callbacks), result cache with provenance
    claims       Student-t intervals, paired differences, symmetric verdicts computed from numbers
    plots        the one plotting module: style, seed bands, run curves, live plots
    token_view   per-token tables and HTML highlighting of ERC's clipped tokens
    studies      named studies as data (cells x arms x seeds); runner: `python -m ercref.study NAME`,
                 a resumable per-run cache under data/results/NAME/ with provenance; load_study
    stability    per-run stability measures (entropy volatility, grad-norm spikes, collapse step)
    report       verdict tables and the markdown report of a study cache (README "What we found")
    teaching     show_source / check_exercise / headless-safe interact for the notebooks
    nbexec       execute, shrink and stamp the committed notebooks (`make notebooks`)

Nothing here defines loss math: every number comes from ercref's core or the engine.
Imports matplotlib / pandas (the core and the engine do not).
"""
