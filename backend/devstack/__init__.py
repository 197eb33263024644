"""The local stack for development, demos and tests: child processes, nats-server, Prometheus,
the stack itself and its control file, and a built-in test device. Never deployed."""
