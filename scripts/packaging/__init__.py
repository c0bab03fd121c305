"""Building what is served: weights (official or seeded random), the archives with their compiled
forward passes, and the KServe bundle."""
