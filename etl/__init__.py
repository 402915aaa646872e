"""The etl stage: imagery (Sentinel Hub, STAC, local rasters, synthetic scenes) -> tiles in
PNG tar shards with a manifest (`canopy etl`; the format: canopy/tiles.py)."""
