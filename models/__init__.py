"""Recipes for the models ortdecode ships (run from the repository root, e.g. `python -m models.numbers`)."""
