"""The product app with one serving knob changed, for the before/after figures of the optimisations.

`python -m service.bench.serve --loop asyncio --http h11 [serve flags]` runs exactly what `lstm-serve serve`
runs, except for the uvicorn event loop and HTTP parser (the product asks for uvloop and httptools when
installed) or, with --switch-interval-ms, CPython's GIL switch interval.
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
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="CPython's GIL switch interval (default 5 ms): how long the ONNX Runtime worker thread may "
                   "wait for the GIL after a run while the event loop holds it")
    _add_settings_flags(p)
    args = p.parse_args(argv)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    settings = Settings(**{name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)})
    setup_logging(settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop=args.loop, http=args.http,
                log_config=None, access_log=False, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
