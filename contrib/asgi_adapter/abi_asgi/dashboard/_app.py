"""The dashboard application: sign-in, sign-out, the pages' routes, static files."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from abi_asgi.dashboard._pages import Pages
from abi_asgi.dashboard._session import COOKIE, LOGIN_COOKIE, SessionStore, mask, unmasks_to
from abi_asgi.dashboard._web import (
    HERE,
    SECURITY_HEADERS,
    Authenticate,
    Charge,
    Dashboard,
    FormError,
    base_path,
    read_form,
    same_origin,
)
from abi_engine.errors import (
    AbiError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RateLimitExceeded,
    Unauthorized,
)

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["create_dashboard"]


def _next_target(request: Request, value: str | None) -> str:
    """Where to go after signing in: a path under the dashboard, never elsewhere."""
    base = base_path(request)
    if value:
        parsed = urlparse(value)
        if (
            not parsed.scheme
            and not parsed.netloc
            and value.startswith(base + "/")
            and not value.startswith("//")
            and "\\" not in value
        ):
            return value
    return base + "/"


def _nosniff(app: ASGIApp) -> ASGIApp:
    """``app`` with ``X-Content-Type-Options: nosniff`` on its answers."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


class _SignIn:
    """Sign-in and sign-out: the token exchanged for a session, and the session ended."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def login_form(
        self,
        request: Request,
        error: str | None = None,
        status: int = 200,
        next_url: str | None = None,
    ) -> Response:
        if error is None and await self.dash.context(request) is not None:
            return RedirectResponse(
                _next_target(request, request.query_params.get("next")),
                status_code=303,
                headers=SECURITY_HEADERS,
            )
        token = self.dash.login_csrf(request)
        response = self.dash.render(
            request,
            "login.html",
            status=status,
            error=error,
            next=request.query_params.get("next", "") if next_url is None else next_url,
            signed_out="signed_out" in request.query_params,
            login_csrf=mask(token),
        )
        self.dash.set_login_cookie(request, response, token)
        return response

    async def login_page(self, request: Request) -> Response:
        return await self.login_form(request)

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormError as exc:
            return self.dash.error(request, InvalidRequest(str(exc)))
        if not same_origin(request):
            return self.dash.error(request, Forbidden("Cross-origin sign-in refused"))
        expected = request.cookies.get(LOGIN_COOKIE)
        if not expected or not unmasks_to(form.get("csrf_token"), expected):
            return self.dash.error(
                request, Forbidden("The sign-in form's CSRF token is missing or wrong; reload it")
            )
        token = form.get("token", "").strip()
        try:
            principal = await self.dash.authenticate(token)
        except Unauthorized:
            self.dash.charge(request, None, None)  # a guess costs the client address's bucket
            return await self.login_form(
                request, "That access token is not valid.", 401, form.get("next", "")
            )
        self.dash.charge(request, token, principal)
        # a new session id at every sign-in, and the browser's previous session ends
        self.dash.sessions.revoke(request.cookies.get(COOKIE))
        session = self.dash.sessions.create(token, principal.user_id)
        target = _next_target(request, form.get("next"))
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        self.dash.set_session_cookie(request, response, session)
        response.delete_cookie(LOGIN_COOKIE, path=base_path(request) + "/")
        return response

    async def logout(self, request: Request) -> Response:
        ctx = await self.dash.context(request)
        if ctx is None:
            return RedirectResponse(
                base_path(request) + "/login", status_code=303, headers=SECURITY_HEADERS
            )
        try:
            form = await read_form(request)
        except FormError as exc:
            return self.dash.error(request, InvalidRequest(str(exc)), ctx)
        if not (same_origin(request) and ctx.session.csrf_ok(form.get("csrf_token"))):
            return self.dash.error(
                request, Forbidden("The form's CSRF token is missing or wrong"), ctx
            )
        self.dash.sessions.revoke(request.cookies.get(COOKIE))
        response = RedirectResponse(
            base_path(request) + "/login?signed_out=1", status_code=303, headers=SECURITY_HEADERS
        )
        self.dash.clear_session_cookie(request, response)
        return response

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]


def _auth_routes(dash: Dashboard) -> list[Route]:
    return _SignIn(dash).routes()


def create_dashboard(
    engine: Engine,
    authenticate: Authenticate,
    *,
    sessions: SessionStore | None = None,
    secure_cookies: bool | None = None,
    charge: Charge | None = None,
) -> Starlette:
    """The dashboard of ``engine`` as a Starlette app (mount it at ``/ui``).

    :param authenticate: the adapter's token check (an access token to its
        :class:`~abi_engine.auth.Principal`; ``Unauthorized`` when unknown).
    :param sessions: where sessions live (default: in memory, 8 hours each, an
        hour without a request ends one).
    :param secure_cookies: mark cookies ``Secure``; ``None`` (default) does
        when the request came over HTTPS.
    :param charge: the rate limiter's charge for each request (see
        :data:`~abi_asgi.dashboard._web.Charge`); ``create_app`` passes the
        adapter's, so sign-in guesses and pages count as ``/api/v1`` requests do.
        ``None``: no rate limit.
    """
    dash = Dashboard(engine, authenticate, sessions or SessionStore(), secure_cookies, charge)
    app = Starlette(routes=_routes(dash), exception_handlers=_error_handlers(dash))
    app.state.dashboard = dash
    return app


def _routes(dash: Dashboard) -> list[Route | Mount]:
    pages = Pages(dash)
    page, action = dash.page, dash.action
    return [
        *_auth_routes(dash),
        Route("/", page(pages.overview), methods=["GET"]),
        Route("/workflows", page(pages.workflows), methods=["GET"]),
        Route("/workflows/{workflow_id}", page(pages.workflow), methods=["GET"]),
        Route("/workflows/{workflow_id}/run", action(pages.run), methods=["POST"]),
        Route("/executions", page(pages.executions), methods=["GET"]),
        Route("/executions/{execution_id}", page(pages.execution), methods=["GET"]),
        Route("/executions/{execution_id}/cancel", action(pages.cancel), methods=["POST"]),
        Route("/executions/{execution_id}/rerun", action(pages.rerun), methods=["POST"]),
        Route("/executions/{execution_id}/pause", action(pages.pause_or_resume), methods=["POST"]),
        Route("/executions/{execution_id}/resume", action(pages.pause_or_resume), methods=["POST"]),
        Route(
            "/executions/{execution_id}/{decision:str}",
            action(pages.decide),
            methods=["POST"],
        ),
        Route("/approvals", page(pages.approvals), methods=["GET"]),
        Route("/schedules", page(pages.schedules), methods=["GET"]),
        Route("/schedules/{schedule_id}", page(pages.schedule), methods=["GET"]),
        Route(
            "/schedules/{schedule_id}/{state:str}", action(pages.toggle_schedule), methods=["POST"]
        ),
        Route("/webhooks", page(pages.webhooks), methods=["GET"]),
        Route("/webhooks/{webhook_id}", page(pages.webhook), methods=["GET"]),
        Route(
            "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            action(pages.redeliver),
            methods=["POST"],
        ),
        Mount("/static", app=_nosniff(StaticFiles(directory=HERE / "static")), name="static"),
    ]


def _error_handlers(dash: Dashboard) -> dict[Any, Callable[[Request, Exception], Any]]:
    """The dashboard's answers to Starlette's errors (404, 405...) and to rate limits."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        ctx = await dash.context(request, charge=False)
        error: AbiError
        if exc.status_code == 404:
            error = NotFound(request.url.path, f"No page at {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = InvalidRequest(str(exc.detail))
        return dash.error(request, error, ctx)

    async def rate_limited(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimitExceeded)
        return dash.error(request, exc)

    return {HTTPException: http_error, RateLimitExceeded: rate_limited}
