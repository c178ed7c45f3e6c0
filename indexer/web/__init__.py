"""The platform's server-rendered web pages: the login they share (session.py), the
templates they are drawn with (pages.py, templates/), and one router per area in
indexer/api/routes/ (console.py, workspace.py)."""
