"""The indexer: structured data (patients, exams, reports) and the master patient index."""
