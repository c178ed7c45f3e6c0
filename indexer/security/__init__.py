"""Personal-data protection and caller authentication."""
