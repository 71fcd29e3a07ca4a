"""The DenserNet network, its aggregation, final stage, weights and checkpoints."""
