"""Command line: ``python -m service serve [--host H] [--port P]`` and ``python -m service openapi``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def openapi_text() -> str:
    """The app's OpenAPI document as committed: 2-space indented JSON plus a newline."""
    from service.app import create_app
    from service.settings import Settings

    return json.dumps(create_app(Settings()).openapi(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntk-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API with uvicorn (embedded defaults, no other server)")
    serve.add_argument("--host", help="bind address (default NTK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default NTK_PORT or 8000)")
    export = sub.add_parser("openapi", help="write the OpenAPI document")
    export.add_argument("--output", type=Path, default=OPENAPI_PATH, help=f"default {OPENAPI_PATH}")
    args = parser.parse_args(argv)

    if args.command == "openapi":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(openapi_text(), encoding="utf-8")
        print(f"wrote {args.output}")
        return 0

    import uvicorn

    from service.app import create_app
    from service.observability import configure_logging
    from service.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=args.host or settings.host, port=args.port or settings.port,
                log_config=None, access_log=False, workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
