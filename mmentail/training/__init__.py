"""Fitting: losses, optimisers, the feature cache, strategies, the run directory's life."""
