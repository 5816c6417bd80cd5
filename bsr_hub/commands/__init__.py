"""The command layer: `bsr-hub` and its subcommands, one module per command with the argparse code it owns,
and the training flags that `train.py` parses. The top of the package: nothing else imports it.
"""
