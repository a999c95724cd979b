"""One module per ``npvit`` subcommand (see npvit/cli.py)."""
