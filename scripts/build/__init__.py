"""Building what is served: weights (official or seeded random), the archives with their compiled
forward passes, the model snapshot, and the KServe bundle."""
