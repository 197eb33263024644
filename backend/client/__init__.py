"""Clients of the backend's public interfaces: the operator API's Python client, used by the
``fleet`` CLI and by the simulator's operators (which use the API as people do)."""
