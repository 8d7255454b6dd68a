"""``python -m pyro_dgm`` is the ``pyro-dgm`` command line."""

from pyro_dgm.cli import console_main

if __name__ == "__main__":
    console_main()
