"""Training: recipes (one module each) sharing small pieces (atomic checkpoints, data)."""
