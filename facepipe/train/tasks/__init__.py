"""What each model family hands the training engine (facepipe.train): how to build the model
from its data, how to score a batch, what to measure on held-out faces.

- ``reconstruction``: the per-identity autoencoder reconstructing the identity's faces;
- ``xseg``: the occlusion-aware face segmentation of a target;
- ``pair``: the LoRA adapter of one identity × target pair on the frozen identity model.
"""
