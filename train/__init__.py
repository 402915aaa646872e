"""The train stage: tiles -> a diffusion model with EMA weights and a resumable state
(`canopy train`; the export format: canopy/weights.py and docs/contract.md)."""
