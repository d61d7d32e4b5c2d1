"""Learning: model catalog, datasets and partitions, distillation and training (torch)."""
