"""Where ``polylens`` and ``sae`` meet, as plain functions with typed results: direction finders and
SAEs compared on the toys and in a model's layer, and the activation-store writer. The commands in
``cli.commands`` call these; examples and benchmarks import them."""
