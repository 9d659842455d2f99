"""The ``polylens`` command: parse, call the library, print or write. Nothing else.

Each subcommand is a module here exposing ``register(subparsers)``; it imports
torch and the analysis packages only inside its handler, so ``polylens --help``
stays fast and a missing optional extra never breaks an unrelated command.
"""
