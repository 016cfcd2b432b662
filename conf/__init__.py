"""The Hydra configs (the top-level conf/ folder of the repository, shipped as this package)."""
