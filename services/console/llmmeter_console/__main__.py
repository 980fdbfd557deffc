"""`python -m llmmeter_console`: serve the console until SIGTERM or Ctrl-C."""

from llmmeter_console.server import main

main()
