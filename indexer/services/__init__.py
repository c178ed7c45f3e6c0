"""Domain services of the indexer (plain Python, no HTTP)."""
