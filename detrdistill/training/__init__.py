"""Training: one readable loop plus its optimiser, schedule, sampler and checkpoints."""
