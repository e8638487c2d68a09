"""Test figures beside the majority baseline, plots, re-evaluation of finished runs."""
