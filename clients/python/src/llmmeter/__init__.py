"""Python client and CLI for llmmeter."""
