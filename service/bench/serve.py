"""The product app with one serving knob changed, for the before/after figures of the optimisations.

`python -m service.bench.serve --loop asyncio --http h11 [serve flags]` runs exactly what `lstm-serve serve`
runs, except for the uvicorn event loop and HTTP parser (the product asks for uvloop and httptools when
installed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn


def main(argv: Sequence[str] | None = None) -> int:
    from service.app import create_app
    from service.cli import _add_settings_flags
    from service.config import Settings
    from service.logging import setup_logging

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    _add_settings_flags(p)
    args = p.parse_args(argv)
    settings = Settings(**{name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)})
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)  # as service.shutdown.serve does
    setup_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=args.loop,
        http=args.http,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
