"""The bodies of the `cockpit` subcommands (cockpit/cli.py parses the arguments and builds the engine)."""
