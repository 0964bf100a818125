"""The dashboard's plumbing: templates, sessions on requests, forms, CSRF, answers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import attrs
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope as AsgiScope

from abi_asgi._logsafe import loggable
from abi_asgi.dashboard import _format
from abi_asgi.dashboard._session import COOKIE, LOGIN_COOKIE, Session, SessionStore
from abi_engine import api
from abi_engine.api import ApiRequest
from abi_engine.auth import Principal
from abi_engine.errors import (
    AbiError,
    Forbidden,
    InternalError,
    InvalidRequest,
    RateLimitExceeded,
    Unauthorized,
)
from abi_engine.models import Scope

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["Context", "Dashboard", "FormError", "same_origin"]

log = logging.getLogger("abi_asgi.dashboard")

HERE = Path(__file__).parent
_INTERNAL = InternalError("Internal error; the server logged the details")
#: The largest form body accepted (bytes).
MAX_FORM_BYTES = 300_000
#: Headers on every page: no framing, no inline script or style, nothing cached.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class FormError(Exception):
    """A form the dashboard cannot read (too large, wrong type): 400."""


@attrs.frozen(kw_only=True)
class Context:
    """A signed-in request: its session and the principal of the session's token."""

    request: Request
    session: Session
    principal: Principal

    def can(self, scope: str) -> bool:
        """Whether the signed-in token holds ``scope``."""
        return Scope(scope) in self.principal.scopes


Authenticate = Callable[[str], Awaitable[Principal]]
#: ``charge(scope, token, principal)``: take one request from the caller's rate-limit
#: bucket (the token's when ``principal`` is given, else the client address's); raises
#: ``RateLimitExceeded`` when it is empty. The adapter passes its own, so the dashboard
#: and ``/api/v1`` share the buckets.
Charge = Callable[[AsgiScope, str | None, Principal | None], None]
Handler = Callable[[Context], Awaitable[Response]]


class Dashboard:
    """What every page shares: the engine, the sessions, the templates."""

    def __init__(
        self,
        engine: Engine,
        authenticate: Authenticate,
        sessions: SessionStore,
        secure_cookies: bool | None = None,
        charge: Charge | None = None,
    ) -> None:
        self.engine = engine
        self.authenticate = authenticate
        self._charge = charge
        self.sessions = sessions
        self.secure_cookies = secure_cookies
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            rel=_format.relative,
            abs=_format.absolute,
            iso=_format.iso,
            dur=_format.duration,
            pretty=_format.pretty_json,
            zone=_format.in_zone,
        )

    # -- answers -------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        ctx: Context | None = None,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        """A page from ``template`` with the shared values (base path, user, CSRF)."""
        base = base_path(request)
        html = self.env.get_template(template).render(
            base=base,
            ctx=ctx,
            csrf=ctx.session.masked_csrf() if ctx else "",
            can=ctx.can if ctx else (lambda scope: False),
            path=request.url.path,
            query=dict(request.query_params),
            with_query=_with_query(request),
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, exc: AbiError, ctx: Context | None = None) -> HTMLResponse:
        """The error page of an :class:`AbiError`, with its HTTP status."""
        response = self.render(request, "error.html", ctx, status=exc.http_status, error=exc)
        if isinstance(exc, RateLimitExceeded):
            response.headers["retry-after"] = str(exc.details.get("retry_after", 1))
        return response

    # -- sessions --------------------------------------------------------------------------

    async def context(self, request: Request, charge: bool = True) -> Context | None:
        """The signed-in context of ``request``, or ``None``.

        :param charge: take the request from the caller's rate-limit bucket (the
            session's token, else the client address).
        :raises RateLimitExceeded: that bucket is empty.
        """
        session = self.sessions.get(request.cookies.get(COOKIE))
        principal: Principal | None = None
        if session is not None:
            try:
                principal = await self.authenticate(session.token)
            except Unauthorized:  # the token was revoked meanwhile
                self.sessions.revoke(session.id)
        if charge:
            self.charge(request, session.token if session else None, principal)
        if session is None or principal is None:
            return None
        return Context(request=request, session=session, principal=principal)

    def charge(self, request: Request, token: str | None, principal: Principal | None) -> None:
        """Take one request from the caller's rate-limit bucket (see :data:`Charge`)."""
        if self._charge is not None:
            self._charge(request.scope, token, principal)

    def secure(self, request: Request) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return request.url.scheme == "https"

    def set_session_cookie(self, request: Request, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self.sessions.ttl_seconds),
            path=base_path(request) + "/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def clear_session_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE,
            path=base_path(request) + "/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def login_csrf(self, request: Request) -> str:
        """The sign-in form's double-submit CSRF token (before any session exists)."""
        value = request.cookies.get(LOGIN_COOKIE, "")
        return value if len(value) >= 32 else secrets.token_urlsafe(32)

    def set_login_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            value,
            max_age=3600,
            path=base_path(request) + "/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    # -- the engine's operations -------------------------------------------------------------

    async def op(
        self,
        ctx: Context,
        name: str,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Run REST operation ``name`` as the signed-in token: the same scope checks,
        validation and answers as ``/api/v1``."""
        request = ApiRequest(
            path=dict(path or {}), query={k: v for k, v in (query or {}).items()}, body=body
        )
        return await api.call(self.engine, ctx.principal, name, request)

    # -- route wrappers ---------------------------------------------------------------------

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: signed in, else sent to the sign-in form."""

        async def endpoint(request: Request) -> Response:
            ctx = await self.context(request)
            if ctx is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                login = f"{base_path(request)}/login?{urlencode({'next': target})}"
                if request.headers.get("hx-request") == "true":
                    # a live page's poll: load the sign-in page instead of splicing it in
                    return Response(
                        status_code=200, headers={**SECURITY_HEADERS, "hx-redirect": login}
                    )
                return RedirectResponse(login, status_code=303, headers=SECURITY_HEADERS)
            try:
                return await handler(ctx)
            except AbiError as exc:
                return self.error(request, exc, ctx)
            except Exception:
                log.exception("Dashboard page %s failed", loggable(request.url.path))
                return self.error(request, _INTERNAL, ctx)

        return endpoint

    def action(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A POST action: signed in (else 401), its CSRF token right (else 403)."""

        async def endpoint(request: Request) -> Response:
            ctx = await self.context(request)
            if ctx is None:
                return self.error(request, Unauthorized("Sign in first: the session is missing"))
            if not same_origin(request):
                return self.error(request, Forbidden("Cross-origin form refused"), ctx)
            try:
                form = await read_form(request)
            except FormError as exc:
                return self.error(request, InvalidRequest(str(exc)), ctx)
            if not ctx.session.csrf_ok(form.get("csrf_token")):
                return self.error(
                    request,
                    Forbidden("The form's CSRF token is missing or wrong; reload the page"),
                    ctx,
                )
            request.state.form = form
            try:
                return await handler(ctx)
            except AbiError as exc:
                return self.error(request, exc, ctx)
            except Exception:
                log.exception("Dashboard action %s failed", loggable(request.url.path))
                return self.error(request, _INTERNAL, ctx)

        return endpoint


def base_path(request: Request) -> str:
    """Where the dashboard is mounted (``/ui``, or ``/prefix/ui``)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def redirect(ctx: Context, to: str) -> RedirectResponse:
    """303 to ``to`` under the dashboard (after a POST)."""
    return RedirectResponse(base_path(ctx.request) + to, status_code=303, headers=SECURITY_HEADERS)


def form_of(ctx: Context) -> dict[str, str]:
    form: dict[str, str] = ctx.request.state.form
    return form


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of each name)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise FormError(f"The form is larger than {MAX_FORM_BYTES} bytes")
    if not raw:
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise FormError("Forms must be sent as application/x-www-form-urlencoded")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("The form is not valid UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def same_origin(request: Request) -> bool:
    """A browser's ``Origin`` (when sent) names this server, and its fetch metadata
    (``Sec-Fetch-Site``, when sent) does not say the request came from another site."""
    if request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _with_query(request: Request) -> Callable[..., str]:
    """``with_query(page=2)``: this page's URL with some query values replaced."""

    def build(**changes: Any) -> str:
        values = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
        for key, value in changes.items():
            if value is not None and value != "":
                values.append((key, str(value)))
        return request.url.path + ("?" + urlencode(values) if values else "")

    return build
