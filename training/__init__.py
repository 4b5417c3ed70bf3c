"""PyTorch side: datasets with on-the-fly distortions, models, training and evaluation CLIs."""
