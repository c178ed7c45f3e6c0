"""Plain-Python logic of the Orthanc plugins (importable and testable without Orthanc).

Only the glue scripts beside this package (`edge_plugin.py`, `central_plugin.py`) import
`orthanc`; they hand Orthanc's functions to the classes here.
"""

__version__ = "0.1.0"
