"""User commands (compare, eval, sft, rm-data/train-rm, demo, bench, launch, reward-server,
make-task): each module adds its subcommand with ``add_cli``. They build on the core
(config, trainer, runtime, data, models) and the plug-in packages; nothing in the core imports
them."""
