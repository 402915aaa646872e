"""Canopy: satellite forest imagery -> tiles -> DDPM -> samples -> metrics.

This package holds only what every stage shares: the params schema root, the CLI root,
user-facing errors, atomic file helpers, hashing, and the files the stages exchange (one module
per format: tiles, weights, samples). Stage logic lives in the stage packages
(`etl`, `train`, `sample`, `evaluate`) and the model math in `model`.
"""

__version__ = "0.1.0"
