"""``python -m secompile``: the command line."""

from secompile.compiler.app.cli import main

if __name__ == "__main__":
    main()
