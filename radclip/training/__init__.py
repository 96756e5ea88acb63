"""Training stages: the 2D fine-tune, the slice-embedding cache and the slice-pooling adapter."""
