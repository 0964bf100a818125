"""The web dashboard: server-rendered pages under ``/ui`` beside ``/api/v1``.

:func:`create_dashboard` builds it; :func:`abi_asgi.create_app` mounts it
(``dashboard=True``, the default). Sign-in exchanges an access token for a
session cookie (see :mod:`abi_asgi.dashboard._session`); every page and action
then runs as that token, through the same operations and scope checks as the
REST API. Jinja2 templates (autoescaped), vendored htmx and a few lines of our
own JavaScript: no build step, no CDN.
"""

from abi_asgi.dashboard._app import create_dashboard
from abi_asgi.dashboard._session import Session, SessionStore

__all__ = ["Session", "SessionStore", "create_dashboard"]
