"""``python -m kops`` runs the ``kops`` command line."""

from kops.cli.main import main

if __name__ == "__main__":
    main(prog_name="kops")
