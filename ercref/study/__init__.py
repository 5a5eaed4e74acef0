"""ercref.study: teaching and experiment tools built on the engine (ercref.lm) and the core.

    bandits      toy K-armed and contextual bandits for notebook 01 (one update = the core objective)
    experiments  runs of the engine's Trainer for experiments (callbacks: warm-up reuse, token
                 captures, live plots) and notebook 05's GPU and paper-recipe helpers
    studies      named studies as data (cells x arms x seeds, each arm's overrides)
    runner       `python -m ercref.study NAME`: runs a study's missing runs into its cache, in pieces
    cache        the study cache on disk (data/results/NAME/): atomic writes with integrity hashes,
                 checked reads, load_study
    claims       Student-t intervals, paired differences, symmetric verdicts computed from numbers
    verdict_rules  the one set of rules deciding whether a comparison gets a verdict (K = 1, seeds,
                 learning), its wording (supported / not supported / contradicted), the chance count
    stability    per-run stability measures (entropy volatility, grad-norm spikes, collapse step)
    report       verdict tables and the markdown report of a study cache (the blocks of docs/results.md)
    results_page docs/results.md, the README's results summary and its figure, from the caches
    plots        the one plotting module: style, seed bands, run comparisons, live plots
    token_view   per-token tables and HTML highlighting of ERC's clipped tokens
    teaching     show_source / check_exercise / headless-safe interact for the notebooks

Nothing here defines loss math: every number comes from ercref's core or the engine.
Imports matplotlib / pandas (the core does not; the engine only matplotlib, for a run's PNG).
"""
