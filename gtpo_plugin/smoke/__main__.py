"""``python -m gtpo_plugin.smoke``: see :mod:`gtpo_plugin.smoke.cli`."""

from gtpo_plugin.smoke.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
