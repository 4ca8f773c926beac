"""Persistence beside the database: recorded bars (store/bars.py)."""
