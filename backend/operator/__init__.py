"""The operator plane: the HTTP API and its schema, the fleet state, rollouts, the shell
relay, their configuration and errors. Its Python client is ``backend.client``."""
