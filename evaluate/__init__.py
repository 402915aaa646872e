"""The evaluate stage: generated tiles against held-out real tiles -> metrics, each beside
its real-vs-real floor (`canopy evaluate`)."""
