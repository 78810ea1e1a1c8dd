"""Compat rerank APIs: thin translations onto the same ``Engine.rank`` as /v1/ranking.

- Cohere / Jina / vLLM shape: ``POST /v1/rerank`` and ``/v2/rerank``
  ``{query, documents: [str | {text}], top_n?, return_documents?}`` ->
  ``{id, results: [{index, relevance_score, document?}], meta}``. ``relevance_score`` is
  ``sigmoid(logit)`` for cross-encoders (Cohere promises 0..1) and the cosine for bi-encoders.
- TEI shape: ``POST /rerank`` ``{query, texts, raw_scores?, return_text?, truncate?}`` ->
  ``[{index, score, text?}]``; ``score`` is the sigmoid unless ``raw_scores``.
- NVIDIA's hosted route: ``POST /v1/retrieval/{org}/{model}/reranking`` (model spelled with
  underscores in the URL, dots in the body) -> the /v1/ranking handler.
- vLLM: ``POST /score`` and ``/v1/score`` ``{model?, text_1, text_2}`` (1 -> N or N -> N) ->
  ``{id, object: list, created, model, data: [{index, object: score, score}], usage}``; scores as
  ``relevance`` (vLLM applies the sigmoid to one-label classifiers too). vLLM's own ``/v1/rerank``
  takes the Cohere body above.
- TEI: ``POST /embed`` ``{inputs, normalize?, truncate?, truncation_direction?, prompt_name?}`` ->
  a bare list of vectors; ``GET /info``.
- NIM: ``GET /v1/metadata`` and ``GET /v1/version``.
(docs/api.md lists where each differs from its peer.)
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from rankserve import __version__
from rankserve.api import schemas as s
from rankserve.api.requests import check_auth, embed_request, engine_for, engines_of, rank_request
from rankserve.api.routes import ranking
from rankserve.api.schemas import ERRORS
from rankserve.engine.engine import TOKENIZE_WORKERS, Engine, RankResult
from rankserve.engine.outputs import l2_normalize
from rankserve.errors import InvalidRequest

router = APIRouter()


class CohereRerankRequest(s.Request):
    model_config = s.example({"query": s.EXAMPLE_QUERY, "documents": s.EXAMPLE_PASSAGES, "top_n": 2})

    model: StrictStr | None = None
    query: StrictStr = Field(min_length=1)
    documents: list[StrictStr | s.TextItem] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = False
    max_tokens_per_doc: StrictInt | None = Field(None, ge=1, description="accepted; truncation follows the model limit")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict


class TeiRerankRequest(s.Request):
    model_config = s.example({"query": s.EXAMPLE_QUERY, "texts": s.EXAMPLE_PASSAGES})

    query: StrictStr = Field(min_length=1)
    texts: list[StrictStr] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = True
    truncation_direction: Literal["Right", "Left"] = "Right"


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def relevance(engine: Engine, logit: float, raw: bool = False) -> float:
    """0..1 for cross-encoder logits (sigmoid); cosine for bi-encoders, which is already bounded."""
    return logit if raw or engine.spec.kind == "embedder" else sigmoid(logit)


async def _rank(
    request: Request, model: str | None, query: str, texts: list[str], truncate: str, field: str = "documents"
) -> tuple[Engine, RankResult]:
    engine, _ = engine_for(request, model, "rank")
    return engine, await rank_request(request, engine, query, texts, truncate, field)


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    dependencies=[Depends(check_auth)],
)
@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    dependencies=[Depends(check_auth)],
)
async def cohere_rerank(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    engine, result = await _rank(request, body.model, body.query, texts, request.app.state.config.truncate_default)
    order = result.order[: body.top_n]
    return CohereRerankResponse(
        id=str(uuid.uuid4()),
        results=[
            CohereResult(
                index=i,
                relevance_score=relevance(engine, result.scores[i]),
                document={"text": texts[i]} if body.return_documents else None,
            )
            for i in order
        ],
        meta={"billed_units": {"search_units": 1}, "tokens": {"input_tokens": result.tokens}},
    )


@router.post(
    "/rerank",
    response_model=list[TeiRank],
    response_model_exclude_none=True,
    responses=ERRORS,
    dependencies=[Depends(check_auth)],
)
async def tei_rerank(body: TeiRerankRequest, request: Request) -> list[TeiRank]:
    if body.truncation_direction == "Left":
        raise InvalidRequest(
            "truncation_direction Left is not supported for pairs; use Right", param="truncation_direction"
        )
    engine, result = await _rank(request, None, body.query, body.texts, "END" if body.truncate else "NONE", "texts")
    order = result.order
    return [
        TeiRank(
            index=i,
            score=relevance(engine, result.scores[i], body.raw_scores),
            text=body.texts[i] if body.return_text else None,
        )
        for i in order
    ]


@router.post(
    "/v1/retrieval/{org}/{model}/reranking",
    response_model=s.RankingResponse,
    responses=ERRORS,
    dependencies=[Depends(check_auth)],
)
async def hosted_ranking(org: str, model: str, body: s.RankingRequest, request: Request) -> s.RankingResponse:
    """NVIDIA's hosted URL; the URL's model must name a served one (dots may be underscores)."""
    engines = engines_of(request)
    key = lambda name: name.split("/")[-1].replace("_", ".")  # noqa: E731
    match = next((name for name in engines if key(name) == model.replace("_", ".")), None)
    if match is None:
        raise InvalidRequest(
            f"model {org}/{model} in the URL is not served here; this server serves {', '.join(map(repr, engines))}",
            param="model",
        )
    if body.model is None:
        body = body.model_copy(update={"model": match})
    return await ranking(body, request)


# -- vLLM: POST /score, /v1/score --------------------------------------------------------------


class VllmScoreRequest(s.Request):
    model_config = s.example({"text_1": s.EXAMPLE_QUERY, "text_2": s.EXAMPLE_PASSAGES})

    model: StrictStr | None = None
    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]
    truncate_prompt_tokens: StrictInt | None = Field(
        None, description="only -1 / null (the model's limit) is supported"
    )
    encoding_format: StrictStr | None = None
    user: StrictStr | None = None


class VllmScore(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class VllmScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[VllmScore]
    usage: VllmUsage


def score_pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: one text_1 against every text_2 (1 -> N), or text_1[i] with text_2[i] (N -> N)."""
    left = [text_1] if isinstance(text_1, str) else text_1
    right = [text_2] if isinstance(text_2, str) else text_2
    if not left or not right:
        raise InvalidRequest("text_1 and text_2 need at least one text each", param="text_1" if not left else "text_2")
    if len(left) == 1:
        return [(left[0], r) for r in right]
    if len(left) != len(right):
        raise InvalidRequest(
            f"text_1 has {len(left)} texts and text_2 {len(right)}: give one text_1, or as many as "
            "text_2 (pairs by position)",
            param="text_2",
        )
    return list(zip(left, right))


@router.post("/score", response_model=VllmScoreResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
@router.post("/v1/score", response_model=VllmScoreResponse, responses=ERRORS, dependencies=[Depends(check_auth)])
async def vllm_score(body: VllmScoreRequest, request: Request) -> VllmScoreResponse:
    if body.truncate_prompt_tokens not in (None, -1):
        raise InvalidRequest(
            "truncate_prompt_tokens: only -1 (the model's own limit) is supported; inputs are "
            "truncated at the model's limit",
            param="truncate_prompt_tokens",
        )
    engine, _ = engine_for(request, body.model, "rank")
    pairs = score_pairs(body.text_1, body.text_2)
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    scores = [0.0] * len(pairs)
    tokens = 0

    async def one(query: str, indices: list[int]) -> None:
        nonlocal tokens
        result = await rank_request(request, engine, query, [pairs[i][1] for i in indices], "END", "text_2")
        tokens += result.tokens
        for i, score in zip(indices, result.scores):
            scores[i] = relevance(engine, score)

    await asyncio.gather(*(one(q, idx) for q, idx in by_query.items()))  # one batcher: they batch together
    return VllmScoreResponse(
        id=f"score-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=engine.name,
        data=[VllmScore(index=i, score=v) for i, v in enumerate(scores)],
        usage=VllmUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


# -- TEI: POST /embed, GET /info ---------------------------------------------------------------


class TeiEmbedRequest(s.Request):
    model_config = s.example({"inputs": s.EXAMPLE_PASSAGES[:2]})

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Literal["Right", "Left"] = "Right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = Field(None, ge=1)


PROMPT_NAMES = {"query": "query", "passage": "passage", "document": "passage"}


@router.post("/embed", response_model=list[list[float]], responses=ERRORS, dependencies=[Depends(check_auth)])
async def tei_embed(body: TeiEmbedRequest, request: Request) -> list[list[float]]:
    engine, _ = engine_for(request, None, "embed")
    if not body.normalize and engine.spec.normalize:
        raise InvalidRequest(
            "normalize=false: this model's vectors are L2-normalized by the model itself", param="normalize"
        )
    if body.prompt_name is not None and body.prompt_name not in PROMPT_NAMES:
        raise InvalidRequest(
            f"prompt_name {body.prompt_name!r}: use one of {', '.join(PROMPT_NAMES)}", param="prompt_name"
        )
    truncate = "NONE" if not body.truncate else "END" if body.truncation_direction == "Right" else "START"
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    input_type = PROMPT_NAMES.get(body.prompt_name or "")
    result = await embed_request(request, engine, texts, input_type, truncate, body.dimensions, "inputs")
    vectors = result.vectors  # already unit vectors when the model normalizes (the runner does it)
    if body.normalize and not engine.spec.normalize:
        vectors = l2_normalize(vectors)
    return vectors.astype("float64").tolist()


@router.get("/info", dependencies=[Depends(check_auth)])
async def tei_info(request: Request) -> dict:
    """TEI's /info for the default model (ranking's, else embeddings')."""
    engine, _ = engine_for(request, None, "rank")
    config = request.app.state.config
    kind = (
        {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        if engine.spec.kind == "cross-encoder"
        else {"embedding": {"pooling": engine.spec.pooling}}
    )
    return {
        "model_id": engine.name,
        "model_sha": None,
        "model_dtype": engine.runner.precision,
        "model_type": kind,
        "max_concurrent_requests": config.max_queue_requests,
        "max_input_length": engine.spec.max_length,
        "max_batch_tokens": engine.batcher.max_batch_tokens,
        "max_client_batch_size": config.max_inputs,
        "tokenization_workers": TOKENIZE_WORKERS,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }


# -- NIM: GET /v1/metadata, /v1/version --------------------------------------------------------


@router.get("/v1/metadata", response_model=s.Metadata, dependencies=[Depends(check_auth)])
async def nim_metadata(request: Request) -> s.Metadata:
    """NIM's metadata shape (``modelInfo[].shortName``/``modelUrl``, the folder loaded), plus where each
    model's weights came from: a Hub repo's id, the revision asked for and the commit served. A model
    still loading is listed by name only."""
    state = request.app.state
    infos = []
    for name in state.served_names:
        engine = state.engines.get(name)
        if engine is None:
            infos.append(s.ModelInfo(shortName=name, modelName=name))
            continue
        source = engine.source.describe()
        infos.append(
            s.ModelInfo(
                shortName=name,
                modelName=name,
                modelUrl=f"file://{source['path']}",
                architecture=engine.spec.architecture,
                kind=engine.spec.kind,
                maxLength=engine.spec.max_length,
                backend=engine.config.backend,
                precision=engine.runner.precision,
                source=s.ModelSourceInfo(**source),
            )
        )
    return s.Metadata(version=__version__, modelInfo=infos)


@router.get("/v1/version")
async def nim_version() -> dict:
    return {"release": __version__, "api": "1.0.0"}
