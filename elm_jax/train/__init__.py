"""Training: optimiser and loss (the paper's recipe), the jitted step, checkpoints, metrics, loop."""
