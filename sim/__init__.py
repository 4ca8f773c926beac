"""Running the strategy on recorded or synthetic days without a gateway: the fast backtest
(`sim.backtest.run_backtest`, `python backtest.py`), its days (`sim.days`), its account
(`sim.ledger`), results (`sim.results`) and outputs (`sim.outputs`)."""
