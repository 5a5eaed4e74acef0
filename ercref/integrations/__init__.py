"""Thin adapters that put ercref's losses and ERC mask into existing distributed engines.

They import their engine lazily (only when you import the submodule) and contain no loss math.
"""
