"""fleetharness simulator: virtual gateways driven by Locust."""
