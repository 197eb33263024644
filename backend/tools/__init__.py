"""Planning and verification tools: the capacity planner, the CI gate (``fleet check``) and
the protocol fuzzer."""
