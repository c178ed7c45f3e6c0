"""The local stack launcher: every component as a native process on loopback.

`python -m deploy.stack up|down|status|clean|env` (the Makefile's `make up` & co. call it).
"""
