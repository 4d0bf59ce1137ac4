"""Fake province web apps: the iOffice document system and the "dvc" procedure portal.

Run: `python -m lab.servers.web --app ioffice|dvc --listen ADDR:PORT [--cert FILE --key FILE]
[--mode normal|wrong_content|status500|slow] [--delay SECONDS]` (HTTPS when a certificate is given, else HTTP;
ADDR may be IPv6 in brackets: `[::1]:8443`).

iOffice: `/` redirects (302) to `/login`, a login form (POST `/login`, fields `username`, `password` and a hidden
`_csrf` token) whose page mixes NFC (title) and NFD (paragraph) Vietnamese text; `vanthu` / `matkhau` with a
valid token sets the `IOFFICE_SESSION` cookie and redirects to `/home` ("Xin chào, Văn thư"), which without a
session redirects back to `/login`. dvc: "Cổng dịch vụ công" at `/`. Both have `/health` (always 200).
Modes change every other page: `wrong_content` serves a maintenance page, `status500` answers 500 and `slow`
waits `--delay` seconds before answering.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import ssl
import unicodedata
from collections import deque

from aiohttp import web

USERNAME, PASSWORD = "vanthu", "matkhau"
SESSION_COOKIE = "IOFFICE_SESSION"
IOFFICE_TITLE = "Hệ thống quản lý văn bản và điều hành"
IOFFICE_WELCOME = "Xin chào, Văn thư"
DVC_TITLE = "Cổng dịch vụ công"
MAINTENANCE = "Hệ thống đang bảo trì"
MODES = ("normal", "wrong_content", "status500", "slow")

MODE = web.AppKey("mode", str)
DELAY = web.AppKey("delay", float)
CSRF_TOKENS = web.AppKey("csrf_tokens", deque)
SESSIONS = web.AppKey("sessions", set)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (f'<!DOCTYPE html>\n<html lang="vi"><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body>\n{body}\n</body></html>\n")
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _nfd(text: str) -> str:
    # Real pages pasted from word processors carry decomposed diacritics: content checks must normalize.
    return unicodedata.normalize("NFD", text)


def _login_page(request: web.Request, error: str = "") -> web.Response:
    token = secrets.token_urlsafe(16)
    request.app[CSRF_TOKENS].append(token)
    message = f'<p class="error">{error}</p>' if error else ""
    return _page(IOFFICE_TITLE, f"""<h1>{IOFFICE_TITLE}</h1>
<p>{_nfd(IOFFICE_TITLE + " - Đăng nhập hệ thống")}</p>
{message}
<form method="post" action="/login">
<input type="hidden" name="_csrf" value="{token}">
<label>Tên đăng nhập <input type="text" name="username"></label>
<label>Mật khẩu <input type="password" name="password"></label>
<button type="submit">Đăng nhập</button>
</form>""")


async def ioffice_root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/login")


async def ioffice_login_form(request: web.Request) -> web.Response:
    return _login_page(request)


async def ioffice_login(request: web.Request) -> web.Response:
    form = await request.post()
    tokens = request.app[CSRF_TOKENS]
    token = form.get("_csrf", "")
    if token not in tokens:
        return _page(IOFFICE_TITLE, "<p>Phiên làm việc không hợp lệ (CSRF)</p>", status=403)
    tokens.remove(token)  # one use per token, like real frameworks
    if form.get("username") != USERNAME or form.get("password") != PASSWORD:
        return _login_page(request, "Sai tên đăng nhập hoặc mật khẩu")
    session = secrets.token_urlsafe(24)
    request.app[SESSIONS].add(session)
    response = web.Response(status=302, headers={"Location": "/home"})
    response.set_cookie(SESSION_COOKIE, session, httponly=True, secure=request.secure, samesite="Lax")
    return response


async def ioffice_home(request: web.Request) -> web.Response:
    if request.cookies.get(SESSION_COOKIE) not in request.app[SESSIONS]:
        raise web.HTTPFound("/login")
    return _page(IOFFICE_TITLE, f"<h1>{IOFFICE_WELCOME}</h1>\n<p>Văn bản đến: 3 chưa xử lý</p>")


async def dvc_root(request: web.Request) -> web.Response:
    return _page(DVC_TITLE, f"<h1>{DVC_TITLE}</h1>\n<p>{_nfd('Thủ tục hành chính cấp xã')}</p>")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "mode": request.app[MODE]})


@web.middleware
async def failure_mode(request: web.Request, handler):
    """Apply the configured failure mode to every page but /health."""
    mode = request.app[MODE]
    if request.path == "/health" or mode == "normal":
        return await handler(request)
    if mode == "wrong_content":
        return _page(MAINTENANCE, f"<h1>{MAINTENANCE}</h1>\n<p>Vui lòng quay lại sau.</p>")
    if mode == "status500":
        return _page("500 Internal Server Error", "<h1>Lỗi máy chủ</h1>", status=500)
    await asyncio.sleep(request.app[DELAY])  # slow
    return await handler(request)


def create_app(app: str = "ioffice", mode: str = "normal", delay: float = 3.0) -> web.Application:
    """Build the aiohttp application for `app` ("ioffice" or "dvc") in the given failure mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    application = web.Application(middlewares=[failure_mode])
    application[MODE] = mode
    application[DELAY] = delay
    application[CSRF_TOKENS] = deque(maxlen=1000)
    application[SESSIONS] = set()
    application.router.add_get("/health", health)
    if app == "ioffice":
        application.router.add_get("/", ioffice_root)
        application.router.add_get("/login", ioffice_login_form)
        application.router.add_post("/login", ioffice_login)
        application.router.add_get("/home", ioffice_home)
    elif app == "dvc":
        application.router.add_get("/", dvc_root)
    else:
        raise ValueError(f"app must be 'ioffice' or 'dvc', not {app!r}")
    return application


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `ADDR:PORT` or `[V6ADDR]:PORT` into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be ADDR:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("ioffice", "dvc"), required=True)
    parser.add_argument("--listen", required=True, help="ADDR:PORT, IPv6 as [ADDR]:PORT")
    parser.add_argument("--cert", help="PEM certificate chain (serve HTTPS)")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds to wait in slow mode")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, port = parse_listen(args.listen)
    ssl_context = None
    if args.cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.cert, args.key)
    # run_app turns SIGTERM into a clean shutdown.
    web.run_app(create_app(args.app, args.mode, args.delay), host=host, port=port, ssl_context=ssl_context,
                print=lambda msg: logging.info("%s", msg))


if __name__ == "__main__":
    main()
