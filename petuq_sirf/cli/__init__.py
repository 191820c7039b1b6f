"""The ``petuq`` command-line interface."""
