"""One module per ``pgwarden`` subcommand; see :mod:`proxy.cli`."""
