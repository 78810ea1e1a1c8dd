"""Compat rerank APIs: thin translations onto the same ``Engine.rank`` as /v1/ranking.

- Cohere / Jina / vLLM shape: ``POST /v1/rerank`` and ``/v2/rerank``
  ``{query, documents: [str | {text}], top_n?, return_documents?}`` ->
  ``{id, results: [{index, relevance_score, document?}], meta}``. ``relevance_score`` is
  ``sigmoid(logit)`` for cross-encoders (Cohere promises 0..1) and the cosine for bi-encoders.
- TEI shape: ``POST /rerank`` ``{query, texts, raw_scores?, return_text?, truncate?}`` ->
  ``[{index, score, text?}]``; ``score`` is the sigmoid unless ``raw_scores``.
- NVIDIA's hosted route: ``POST /v1/retrieval/{org}/{model}/reranking`` (model spelled with
  underscores in the URL, dots in the body) -> the /v1/ranking handler.
"""

from __future__ import annotations

import math
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from rankserve.api import schemas as s
from rankserve.api.routes import ERRORS, check_auth, engine_for, engines_of, rank_request, ranking
from rankserve.engine.engine import Engine, RankResult
from rankserve.errors import InvalidRequest

router = APIRouter()


class CohereRerankRequest(s.Request):
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


async def _rank(request: Request, model: str | None, query: str, texts: list[str], truncate: str,
                field: str = "documents") -> tuple[Engine, RankResult, list[int]]:
    engine, _ = engine_for(request, model, "rank")
    result, order = await rank_request(request, engine, query, texts, truncate, field)
    return engine, result, order


@router.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True, responses=ERRORS,
             dependencies=[Depends(check_auth)])
@router.post("/v2/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True, responses=ERRORS,
             dependencies=[Depends(check_auth)])
async def cohere_rerank(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    engine, result, order = await _rank(request, body.model, body.query, texts, "END")
    order = order[: body.top_n] if body.top_n else order
    return CohereRerankResponse(
        id=str(uuid.uuid4()),
        results=[CohereResult(index=i, relevance_score=relevance(engine, result.scores[i]),
                              document={"text": texts[i]} if body.return_documents else None) for i in order],
        meta={"billed_units": {"search_units": 1}, "tokens": {"input_tokens": result.tokens}},
    )


@router.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True, responses=ERRORS,
             dependencies=[Depends(check_auth)])
async def tei_rerank(body: TeiRerankRequest, request: Request) -> list[TeiRank]:
    if body.truncation_direction == "Left":
        raise InvalidRequest("truncation_direction Left is not supported for pairs; use Right", param="truncation_direction")
    engine, result, order = await _rank(request, None, body.query, body.texts, "END" if body.truncate else "NONE", "texts")
    return [TeiRank(index=i, score=relevance(engine, result.scores[i], body.raw_scores),
                    text=body.texts[i] if body.return_text else None) for i in order]


@router.post("/v1/retrieval/{org}/{model}/reranking", response_model=s.RankingResponse, responses=ERRORS,
             dependencies=[Depends(check_auth)])
async def hosted_ranking(org: str, model: str, body: s.RankingRequest, request: Request) -> s.RankingResponse:
    """NVIDIA's hosted URL; the URL's model must name a served one (dots may be underscores)."""
    engines = engines_of(request)
    key = lambda name: name.split("/")[-1].replace("_", ".")  # noqa: E731
    match = next((name for name in engines if key(name) == model.replace("_", ".")), None)
    if match is None:
        raise InvalidRequest(f"model {org}/{model} in the URL is not served here; this server serves "
                             f"{', '.join(map(repr, engines))}", param="model")
    if body.model is None:
        body = body.model_copy(update={"model": match})
    return await ranking(body, request)
