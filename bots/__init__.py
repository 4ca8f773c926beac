"""The bots' wiring pieces: loops, I/O and adapter calls around the trading core.

`exit_manager.py` and `day_trader.py` stay the entry points; their parts live here.
"""
