"""Model families: the per-identity autoencoder, its augmentation and losses (LoRA wiring and
the XSeg U-Net join them later). Plain PyTorch; no Dagster here."""
