"""``python -m latentcube.cli``: the same as the ``latentcube`` command."""

from latentcube.cli import main

main()
