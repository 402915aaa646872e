"""`canopy judge`: people tell real tiles from generated ones, and the answers become metrics.

Not a pipeline stage: people answer after a run, so `canopy judge serve` collects answers into a
SQLite database and `canopy judge report` turns those of the current samples into DVC metrics.
"""
