"""Training side: memory-mapped feature view, dataset and loader."""
