"""The PyTorch side: the built-in model, the TiUE student, the reference pipeline and its graphs,
the tiny VAE, and random models built in code (heavy imports stay in the modules)."""
