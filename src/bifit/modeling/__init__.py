"""Model components: backbone, text encoder, deformable transformer, heads and the full model."""
