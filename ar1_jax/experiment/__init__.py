"""Experiments that train, evaluate and compare several models: `ar1 experiment longtail` (longtail.py)."""
