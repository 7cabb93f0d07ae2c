"""OpenAI-compatible completions, chat completions and model list on the generator's own engine.

vLLM's own OpenAI serving objects (the ones `vllm serve` builds) run on the replica's `AsyncLLM`, so evaluation
harnesses and OpenAI clients see vLLM's request and response shapes, its chat template handling and its errors,
with no second engine. Only these three routes are exposed: nothing here can load weights or change the engine.
vllm is imported inside the replica only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

Gate = Callable[[], contextlib.AbstractAsyncContextManager[int]]


class OpenAIRoutes:
    """The serving objects of one engine, built on first use (a SPIN iteration never pays for them)."""

    def __init__(self, engine: Any, model_path: str, names: list[str]):
        self._engine, self._model_path, self._names = engine, model_path, names
        self._state: Any = None
        self._building = asyncio.Lock()

    async def _serving(self) -> Any:
        async with self._building:
            if self._state is None:
                await self._build()
        return self._state

    async def _build(self) -> None:
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser = make_arg_parser(FlexibleArgumentParser())  # type: ignore[no-untyped-call]
        args = parser.parse_args(["--model", self._model_path, "--served-model-name", *self._names])
        state = State()
        await init_app_state(self._engine, state, args, supported_tasks=("generate",))
        self._state = state
        self.rename(self._model_path, self._names)  # a move while this was being built named the weights anew

    def rename(self, model_path: str, names: list[str]) -> None:
        """The ids the routes answer to after a weight move; requests naming an older id get vLLM's 404."""
        self._model_path, self._names = model_path, names
        if self._state is not None:
            from vllm.entrypoints.openai.models.protocol import BaseModelPath

            # The registry and the model list share this list object: changed in place, both see the new ids.
            paths = self._state.openai_serving_models.base_model_paths
            paths[:] = [BaseModelPath(name=name, model_path=model_path) for name in names]

    async def models(self) -> Response:
        listed = await (await self._serving()).openai_serving_models.show_available_models()
        return JSONResponse(content=listed.model_dump())

    async def completions(self, raw: Request, gate: Gate) -> Response:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        serving = (await self._serving()).openai_serving_completion
        return await _answer(raw, CompletionRequest, serving.create_completion, gate)

    async def chat_completions(self, raw: Request, gate: Gate) -> Response:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        serving = (await self._serving()).openai_serving_chat
        return await _answer(raw, ChatCompletionRequest, serving.create_chat_completion, gate)


async def _answer(raw: Request, request_type: Any, create: Any, gate: Gate) -> Response:
    """Validate the body, then answer as vLLM's own server would, inside the replica's gate (no weight move under
    it). A stream holds the gate from inside its own ASGI call, so the gate is let go however the stream ends."""
    from pydantic import ValidationError

    try:
        request = request_type.model_validate(json.loads(await raw.body()))
    except (ValueError, ValidationError) as e:
        return _error(400, f"invalid request body: {e}")
    if getattr(request, "stream", False):
        return GatedStream(gate, create, request, raw)
    async with gate():
        return _response(await create(request, raw))


def _response(result: Any) -> Response:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(result, ErrorResponse):
        return JSONResponse(content=result.model_dump(), status_code=result.error.code)
    return JSONResponse(content=result.model_dump())


class GatedStream(StreamingResponse):
    """Server-sent events from vLLM, produced while the gate is held: it is entered and left within the response's
    own ASGI call, which unwinds (releasing it) on a finished stream, an error or a client that went away."""

    def __init__(self, gate: Gate, create: Any, request: Any, raw: Request):
        super().__init__(iter(()), media_type="text/event-stream")
        self._gate, self._create, self._request, self._raw = gate, create, request, raw

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with self._gate():
            result = await self._create(self._request, self._raw)
            if not isinstance(result, AsyncIterator):  # vLLM refused it (an error response) before streaming
                await _response(result)(scope, receive, send)
                return
            self.body_iterator = result
            await super().__call__(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    """An error in OpenAI's shape, which its clients raise as the matching exception."""
    kind = "BadRequestError" if status == 400 else "NotFoundError"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})
