"""Helpers shared by the tests: waiting for a condition, reading a study's master index."""
