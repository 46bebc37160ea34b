"""The directory thaw puts first on a parked server's PYTHONPATH (it holds ``sitecustomize.py``).

Not imported as a package; it is a package so that installed wheels carry it.
"""
