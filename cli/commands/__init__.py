"""The ``polylens`` subcommands, one module each exposing ``register(subparsers)``: parse the flags,
call the library or an experiment, print or write the result. Nothing else lives here."""
