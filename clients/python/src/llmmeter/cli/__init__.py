"""The `llmmeter` command line: one module per command group, wired together in :mod:`llmmeter.cli.main`."""
