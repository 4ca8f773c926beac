"""The pure trading core: records, vocabularies and rules shared by the live bots, the
simulated day and the backtest.

Nothing in this package does I/O or reads global settings: it is fed plain records and an
explicit `now`, and returns intents and decisions with reason codes
(tests/test_trading_purity.py keeps it so).
"""
