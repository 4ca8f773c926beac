"""The IB adapter: the only production code that imports ib_async.

It turns IB's objects into the trading core's records and the core's intents into IB
orders (`ib.convert`), and owns market data and account access.
"""
