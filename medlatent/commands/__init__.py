"""The command layer: everything ``medlatent``'s subcommands do with paths, run folders and user inputs.

It sits on top of the core (``medlatent``), the data layer (``medlatent.transforms``) and the
model families (``medlatent.vqvae3d``, ``medlatent.attrivae``); nothing below imports it.
"""
