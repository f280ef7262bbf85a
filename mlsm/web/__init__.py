"""The status site: read-only, server-rendered pages of jobs, nodes, datasets and
syncs, following live over server-sent events.

- `site.py`: the Starlette app (the HTTP edge): routes, security headers, errors;
  mounted by the controller under `/`, or served alone by `mlsm-web` (`main.py`).
- `pages.py`: what each page reads from the store (keyset pages, log tails).
- `live.py`: the live feeds (`/live`), one shared reader per followed job.
- `charts.py`: metric charts as SVG, drawn on the server.
- `access.py`: who may read (loopback, or a read token by Bearer or HTTP Basic),
  for the site and the controller's read API alike.
- `telemetry.py`: `/metrics` (Prometheus) and request timings.
- `templates/`, `static/`: Jinja2 pages, the stylesheet and the one script.
"""

from mlsm.web.site import create_site

__all__ = ["create_site"]
