"""Statistics of the branching study: clustered intervals and the Holm correction.

A branching study measures paired differences d = arm - baseline at branch points (seed, step, K)
along training trajectories. Branch points of one trajectory share its weights and data, so they
are not independent: the unit of replication is the trajectory. Every interval here therefore
works on clusters (one cluster = one trajectory):

    cluster_means(values, clusters)        one mean per trajectory, m_c = mean of its d's
    t interval                             claims.direction_verdict on the m_c: mean +- t_{0.975, C-1} sd / sqrt(C)
    cluster_bootstrap(values, clusters)    cross-check: resample C trajectories with replacement
                                           (whole trajectories, never single branch points), take the
                                           mean of the resampled m_c, percentile 2.5 % / 97.5 %
    t_pvalue(means)                        two-sided p of the one-sample t test of mean(m_c) = 0
                                           (p < 0.05 exactly when the 95 % t interval excludes 0)
    holm(pvalues)                          Holm's step-down adjusted p-values (family-wise error)

Holm (1979): sort the m p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is

    max_{j <= i} min(1, (m - j + 1) p_(j))

returned in the input's order. Rejecting where the adjusted p < alpha keeps the chance of any false
rejection among the m hypotheses below alpha, whatever their dependence.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .claims import t_cdf


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of ``pvalues`` (module doc), in the same order; each in [0, 1]."""
    p = [float(x) for x in pvalues]
    bad = [x for x in p if not (0.0 <= x <= 1.0)]
    if bad:
        raise ValueError(f"pvalues must be numbers in [0, 1], got {bad}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):                 # rank j - 1 (0-based): multiplier m - j + 1 = m - rank
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def cluster_means(values: Sequence[float], clusters: Sequence) -> dict:
    """{cluster: mean of its values}, clusters in sorted order. ValueError for unequal lengths, no
    value, or a NaN / inf value (naming it)."""
    v = np.asarray(list(values), dtype=float)
    c = list(clusters)
    if len(c) != v.size:
        raise ValueError(f"values ({v.size}) and clusters ({len(c)}) must have the same length")
    if v.size == 0:
        raise ValueError("values is empty; a cluster mean needs at least one value")
    if not np.isfinite(v).all():
        raise ValueError(f"values contains a NaN or inf value (at index {int(np.flatnonzero(~np.isfinite(v))[0])})")
    out: dict = {}
    for key in sorted(set(c)):
        out[key] = float(v[[k == key for k in c]].mean())
    return out


def t_pvalue(means: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t test that the mean of ``means`` (one per cluster) is 0.
    One value: 1 (no test). Zero spread: 0 when the mean is not 0, else 1."""
    v = np.asarray(list(means), dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"means must be a non-empty list of finite numbers, got {v.tolist()}")
    if v.size == 1:
        return 1.0
    m, sd = float(v.mean()), float(v.std(ddof=1))
    if sd == 0.0:
        return 0.0 if m != 0.0 else 1.0
    t = abs(m) / (sd / math.sqrt(v.size))
    return min(1.0, max(0.0, 2.0 * (1.0 - t_cdf(t, int(v.size - 1)))))


def cluster_bootstrap(values: Sequence[float], clusters: Sequence, n_boot: int = 4000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (``level``) of the mean of per-cluster means under resampling whole
    clusters with replacement (``n_boot`` draws, numpy Generator seeded with ``seed``: the same
    inputs give the same interval). One cluster: (-inf, inf)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    m = np.asarray(list(cluster_means(values, clusters).values()))
    if m.size == 1:
        return -math.inf, math.inf
    rng = np.random.default_rng(seed)
    draws = m[rng.integers(0, m.size, size=(n_boot, m.size))].mean(axis=1)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
