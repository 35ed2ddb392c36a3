"""The preference labelling page and its JSON API, served by `forge label serve`.

- `GET /`: the page (web/label.html): a prompt, answers A and B side by side, keys 1/2/T/X/E/N;
- `GET /api/next?labeller=NAME`: `{"pair": {id, prompt, answer_a, answer_b, model_id} or null,
  "progress": {...}}`; the pair is claimed for NAME for a few minutes;
- `POST /api/judge` `{"pair_id", "labeller", "choice": "a"|"b"|"tie"|"both_bad", "edited": str|null}`:
  `{"judgement_id", "progress"}`;
- `POST /api/skip` `{"pair_id", "labeller"}`: `{"progress"}`;
- `GET /api/progress[?labeller=NAME]`, `GET /health`.

Design choices:
- the store is anything with `forge.align.preferences.PreferenceStore`'s methods (`LabelStore`): serve
  and align sit side by side and do not import each other; `forge label serve` joins them;
- handlers are plain functions, which FastAPI runs in its thread pool: a store call that waits for the
  database lock never stalls the event loop, and the store opens a connection per call;
- errors are `{"error": message}`: 400 for a bad request, 401 for a missing or wrong key (`api_key`),
  404 for an unknown pair, 413 for a body over `max_body_bytes` (as declared by Content-Length).
"""

import html
import secrets
from importlib import resources
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from forge.errors import ForgeError


class LabelPair(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def prompt(self) -> list[dict[str, str]]: ...
    @property
    def answer_a(self) -> str: ...
    @property
    def answer_b(self) -> str: ...
    @property
    def model_id(self) -> str: ...


class LabelStore(Protocol):
    def next_pair(self, labeller: str) -> LabelPair | None: ...
    def record(self, pair_id: int, labeller: str, choice: str, edited: str | None = None) -> int: ...
    def skip(self, pair_id: int, labeller: str) -> None: ...
    def progress(self, labeller: str | None = None) -> dict[str, Any]: ...


class Judgement(BaseModel):
    pair_id: int
    labeller: str = Field(min_length=1, max_length=100)
    choice: Literal["a", "b", "tie", "both_bad"]
    edited: str | None = Field(None, max_length=100_000)


class Skip(BaseModel):
    pair_id: int
    labeller: str = Field(min_length=1, max_length=100)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_label_app(
    store: LabelStore,
    *,
    model_id: str = "",
    default_labeller: str = "",
    api_key: str | None = None,
    max_body_bytes: int = 1 << 20,
) -> FastAPI:
    """The labelling app over `store` (which already holds the pairs to judge)."""
    app = FastAPI(title="forge label", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_Refused)
    async def _refused(_: Request, error: _Refused) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query"))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.middleware("http")
    async def _limits(request: Request, call_next: Any) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"error": f"the body is over {max_body_bytes} bytes"}, status_code=413)
        if api_key is not None and request.url.path.startswith("/api/"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), api_key.encode()):
                message = "missing or wrong key: give the key `forge label serve` got with --api-key"
                return JSONResponse({"error": message}, status_code=401)
        response: Response = await call_next(request)
        return response

    def _call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except LookupError as e:
            raise _Refused(404, str(e)) from e
        except ForgeError as e:
            raise _Refused(400, str(e)) from e

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        text = resources.files("forge.serve").joinpath("web/label.html").read_text(encoding="utf-8")
        text = text.replace("{{MODEL}}", html.escape(model_id or "preferences"))
        text = text.replace("{{LABELLER}}", html.escape(default_labeller, quote=True))
        return HTMLResponse(text.replace("{{KEY_HIDDEN}}", "" if api_key else "hidden"))

    @app.get("/api/next")
    def next_pair(labeller: str = Query(min_length=1, max_length=100)) -> dict[str, Any]:
        pair = _call(store.next_pair, labeller)
        shown = None
        if pair is not None:
            shown = {
                "id": pair.id,
                "prompt": pair.prompt,
                "answer_a": pair.answer_a,
                "answer_b": pair.answer_b,
                "model_id": pair.model_id,
            }
        return {"pair": shown, "progress": store.progress(labeller)}

    @app.post("/api/judge")
    def judge(body: Judgement) -> dict[str, Any]:
        judgement_id = _call(store.record, body.pair_id, body.labeller, body.choice, body.edited)
        return {"judgement_id": judgement_id, "progress": store.progress(body.labeller)}

    @app.post("/api/skip")
    def skip(body: Skip) -> dict[str, Any]:
        _call(store.skip, body.pair_id, body.labeller)
        return {"progress": store.progress(body.labeller)}

    @app.get("/api/progress")
    def progress(labeller: str | None = None) -> dict[str, Any]:
        return store.progress(labeller)

    return app
