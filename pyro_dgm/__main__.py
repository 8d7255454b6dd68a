"""``python -m pyro_dgm`` is the ``pyro-dgm`` command line."""

from pyro_dgm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
