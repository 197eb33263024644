"""The operator plane: the HTTP API and its schema, the fleet state, rollouts, shell relay,
their configuration, and the API's Python client."""
