"""Data layer: sources (adapters), phantoms, curation, shards, validation."""
