"""Command-line tools that need both layers: the model/data layer (worldmodels) and the agents."""
