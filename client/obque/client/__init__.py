"""The obque client side: the ``obque`` command line (and, with issue 4, Client/Worker)."""
