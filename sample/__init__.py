"""The sample stage: an exported model -> a reproducible set of generated tiles
(`canopy sample`; the format: canopy/samples.py)."""
