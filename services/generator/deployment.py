"""SpinGenerator: a Ray Serve deployment around a vLLM `AsyncLLM` engine.

It serves batched generation for one model directory (to Serve handles, and over HTTP as `POST /generate` and
`GET /info` when its application has a route prefix), OpenAI-compatible `GET /v1/models`, `POST /v1/completions`
and `POST /v1/chat/completions` on the same engine (services/generator/openai_api.py), and moves to new weights in place
when its Serve `user_config` changes (`reconfigure`), after in-flight requests drain, so no output ever
mixes two models. vllm is imported inside the replica only, so callers need not have it installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve

from cluster.files import local_copy
from services.generator.schemas import (
    Completion,
    GenerateRequest,
    GenerateResponse,
    GeneratorArgs,
    GeneratorInfo,
    WeightsUpdate,
    openai_model_ids,
)

logger = logging.getLogger("ray.serve")
http_app = FastAPI(title="SPIN generator")


def refresh_post_load(worker: Any) -> None:
    """Redo the post-load processing of the output projection after an in-place reload.

    vLLM's CPU backend prepacks each linear layer's weight when a model loads. With tied embeddings the
    checkpoint has no `lm_head` entry, so `reload_weights` never repacks it and the old output projection
    stays in use: greedy outputs after a reload then differ from a fresh engine's on the same weights (measured on
    SmolLM2-135M, whose embeddings are tied). Repacking it from the reloaded embedding restores parity with a
    fresh engine; on GPU it is a no-op.
    """
    model = worker.model_runner.model
    lm_head = getattr(model, "lm_head", None)
    method = getattr(lm_head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(lm_head)


def sampled_token_logps(output: Any) -> list[float]:
    """The log-prob of each token vLLM sampled for one completion (its `logprobs`: one {token: Logprob} per step)."""
    return [float(step[token].logprob) for step, token in zip(output.logprobs, output.token_ids, strict=True)]


def engine_kwargs(args: GeneratorArgs, model_path: str) -> dict[str, Any]:
    """vLLM engine arguments for `args` (also what tests/bench gives a bare engine, to compare like with like)."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
        served_model_name=args.served_model_name,
        # No periodic console stats; the engine's metrics go to Prometheus through the Ray stat logger instead.
        disable_log_stats=True,
    )
    if args.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = args.kv_cache_memory_bytes
    if args.num_gpus == 0:
        # vLLM's CPU runner dies ("CPU Generator does not use offset") when it splits the prefill of a request
        # that has a seed, as every generate-stage request does: it rewinds the request's generator the CUDA way.
        # Whole prompts only (measured with SmolLM2 and 64 concurrent prompts; tests/integration covers it).
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(args.max_model_len, 2048)
    return kwargs


@serve.deployment(name="SpinGenerator", health_check_period_s=10, health_check_timeout_s=60)
@serve.ingress(http_app)
class SpinGenerator:
    def __init__(self, args: dict[str, Any]):
        self._args = GeneratorArgs.model_validate(args)
        self._model_path = self._args.model_path
        self._version = self._args.model_version
        self._best = False  # set by the user_config (`reconfigure`), which Serve applies right after __init__
        self._local = local_copy(self._model_path)
        self._engine = self._start_engine(self._local)
        self._engine_started_at = time.time()
        from services.generator.openai_api import OpenAIRoutes

        self._openai = OpenAIRoutes(self._engine, self._local, self._model_ids())
        self._labelled = False  # whether the engine carries the version label yet (set on first use: it is async)
        # Requests in flight, and whether a weight move is under way: a move waits for the requests to
        # drain and new requests wait for the move, so each response comes from exactly one version.
        self._gate = asyncio.Condition()
        self._in_flight = 0
        self._moving = False

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[int]:
        async with self._gate:
            await self._gate.wait_for(lambda: not self._moving)
            if not self._labelled:
                await self._engine.update_weight_version(str(self._version))
                self._labelled = True
            self._in_flight += 1
            version = self._version
        try:
            yield version
        finally:
            # Counted down before any await, so a cancelled request (a client gone) still counts down; the wake-up
            # of a waiting move is shielded from that cancellation.
            self._in_flight -= 1
            await asyncio.shield(self._wake())

    async def _wake(self) -> None:
        async with self._gate:
            self._gate.notify_all()

    def _start_engine(self, model_path: str) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        # vLLM's metrics as Ray metrics (ray_vllm_*, labelled model_name=served_model_name), exported by the node's
        # metrics agent like the run's own: the Serve LLM dashboard of KubeRay reads them.
        return AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_kwargs(self._args, model_path)), stat_loggers=[RayPrometheusStatLogger]
        )

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """`n` completions per prompt, prompt by prompt: [p0 s0, p0 s1, ..., p1 s0, ...]."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        seeds: list[int | None] = [*request.seeds] if request.seeds else [None] * len(request.prompt_token_ids)
        params = [
            # FINAL_ONLY: one message per request, holding all n samples in order (sample i is seeded seed + i).
            SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=m,
                seed=s,
                # 0: the sampled token's own log-prob only. vLLM's default logprobs mode reports the raw model's,
                # before temperature and top-p.
                logprobs=0 if request.token_logps else None,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for m, s in zip(request.max_tokens, seeds, strict=True)
        ]
        async with self._serving() as version:
            outputs = await asyncio.gather(
                *(self._run(ids, p) for ids, p in zip(request.prompt_token_ids, params, strict=True))
            )
        completions = [
            Completion(
                text=o.text,
                token_ids=list(o.token_ids),
                finish_reason=o.finish_reason or "abort",
                token_logps=sampled_token_logps(o) if request.token_logps else None,
                weight_versions=[span.version for span in o.weight_versions or []],
            )
            for out in outputs
            for o in sorted(out.outputs, key=lambda c: c.index)
        ]
        return GenerateResponse(completions=completions, model_version=version)

    @http_app.post("/generate")
    async def generate_over_http(self, request: GenerateRequest) -> GenerateResponse:
        return await self.generate(request)

    @http_app.get("/info")
    async def info_over_http(self) -> GeneratorInfo:
        return await self.info()

    @http_app.get("/v1/models")
    async def openai_models(self) -> Response:
        return await self._openai.models()

    @http_app.post("/v1/completions")
    async def openai_completions(self, request: Request) -> Response:
        return await self._openai.completions(request, self._serving)

    @http_app.post("/v1/chat/completions")
    async def openai_chat_completions(self, request: Request) -> Response:
        return await self._openai.chat_completions(request, self._serving)

    async def _run(self, token_ids: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self._engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, uuid.uuid4().hex):
            final = out
        if final is None:
            raise RuntimeError("the vLLM engine returned no output")
        return final

    def _model_ids(self) -> list[str]:
        return openai_model_ids(self._args.served_model_name, self._version, self._best)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Move to the weights named in the Serve user_config, if they differ from the current ones; a change of
        `best` alone only renames the OpenAI routes' model ids."""
        update = WeightsUpdate.model_validate(user_config)
        if (update.model_path, update.model_version) == (self._model_path, self._version):
            if update.best != self._best:
                self._best = update.best
                self._openai.rename(self._local, self._model_ids())
            return
        async with self._gate:
            self._moving = True
            await self._gate.wait_for(lambda: self._in_flight == 0)
        try:
            local = await asyncio.to_thread(local_copy, update.model_path)
            await self._engine.collective_rpc("reload_weights", kwargs={"weights_path": local})
            await self._engine.collective_rpc(refresh_post_load)
            await self._engine.reset_prefix_cache()
            # The engine's own label: every output from here on says which weights sampled it.
            await self._engine.update_weight_version(str(update.model_version))
            self._labelled = True
            self._model_path, self._version, self._local = update.model_path, update.model_version, local
            self._best = update.best
            self._openai.rename(local, self._model_ids())
        finally:
            async with self._gate:
                self._moving = False
                self._gate.notify_all()
        logger.info("generator moved to %s (version %d)", update.model_path, update.model_version)

    async def args(self) -> GeneratorArgs:
        """The arguments this replica was deployed with (moving weights keeps them unchanged)."""
        return self._args

    async def info(self) -> GeneratorInfo:
        async with self._serving():  # a consistent view: no move half done, and the engine labelled
            return GeneratorInfo(
                model_path=self._model_path,
                model_version=self._version,
                replica_id=serve.get_replica_context().replica_id.unique_id,
                engine_started_at=self._engine_started_at,
                weight_version=await self._engine.get_weight_version(),
                model_ids=self._model_ids(),
                best=self._best,
            )

    async def check_health(self) -> None:
        await self._engine.check_health()
