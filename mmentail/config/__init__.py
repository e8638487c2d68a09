"""The nested experiment configuration, its presets and its command-line flags."""
