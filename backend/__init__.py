"""fleetharness backend: the device-facing shards and the services behind them."""
