"""The baseline of the serving benchmark: a plain Litestar JSON endpoint, served like `adserve serve`.

One `POST /plain` handler decodes a JSON body (the benchmark sends the very same body as a
decision request) and answers a small JSON object. No database, no middleware beyond Litestar's
defaults. Run it with the uvicorn settings `adserve serve` uses for one worker:

    .venv/bin/python bench/plain_app.py --port 8101
"""

from __future__ import annotations

import argparse
from typing import Any

from litestar import Litestar, post

__all__ = ["app", "main"]


@post("/plain", status_code=200)
async def plain(data: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "user_id": data.get("user_id"), "placements": len(data.get("placements", ()))}


app = Litestar(route_handlers=[plain], debug=False)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="plain Litestar JSON endpoint (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    # The same uvicorn.run settings as adserve.__main__._serve with one worker (loop and http
    # "auto": uvloop and httptools when installed), access log off.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
