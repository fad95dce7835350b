"""``python -m gtpo_plugin.demo``: see :func:`gtpo_plugin.demo.cli.main`."""

from gtpo_plugin.demo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
