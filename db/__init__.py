"""Nightshift's data layer: models, migrations and services; imports neither api nor worker."""
