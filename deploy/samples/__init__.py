"""Deterministic sample data: patients, exams, reports and realistic DICOM studies.

Used by the demo, the tests and the benchmarks. `python -m deploy.samples --help`.
"""
