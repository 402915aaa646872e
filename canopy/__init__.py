"""Canopy: satellite forest imagery -> tiles -> DDPM -> samples -> metrics.

This package holds only what every stage shares: the params schema root, the CLI root,
user-facing errors, atomic file helpers and hashing. Stage logic lives in the stage packages
(`etl`, `train`, `sample`, `evaluate`) and the model math in `model`.
"""

__version__ = "0.1.0"
