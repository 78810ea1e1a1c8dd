"""Request and response bodies, with NIM's field names. Strict: a number is not a string.

Unknown fields are ignored (clients add their own), so the NIM clients, LangChain, LlamaIndex,
LiteLLM and the OpenAI SDK all validate against the same models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# Request bodies that work as sent: the API docs' "Try it out" starts from these (without them it
# starts from field placeholders: model "string", an image "string", top_k and top_n both 0).
EXAMPLE_QUERY = "how do I list open files"
EXAMPLE_PASSAGES = [
    "lsof lists open files and the processes that opened them",
    "ls lists the contents of a directory",
    "the weather in Paris is mild in spring",
]


def example(body: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [body]})


class TextItem(Request):
    text: StrictStr = Field(min_length=1)


class Query(TextItem):
    @field_validator("text")
    @classmethod
    def not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query text must contain non-whitespace characters")
        return v


class Passage(Request):
    text: StrictStr | None = Field(
        None, min_length=1, description="The passage's text; may be left out when it has an image"
    )
    image: StrictStr | None = Field(
        None,
        description="VL rerankers only: a base64 data URL, e.g. data:image/png;base64,... (PNG, JPEG, WebP, "
        "GIF, BMP, TIFF)",
    )

    @model_validator(mode="after")
    def text_or_image(self) -> Passage:
        if self.text is None and self.image is None:
            raise ValueError("a passage needs text, an image (VL rerankers), or both")
        return self


class RankingRequest(Request):
    model_config = example({"query": {"text": EXAMPLE_QUERY}, "passages": [{"text": t} for t in EXAMPLE_PASSAGES]})

    model: StrictStr | None = Field(None, description="Served model id; optional")
    query: Query
    passages: list[Passage] = Field(min_length=1)
    truncate: Literal["NONE", "END", "CHUNK"] | None = Field(
        None,
        description="END drops passage tokens, then query tokens, from the right; CHUNK scores overlapping "
        "windows of a long passage and keeps the best; omitted: the server's --truncate-default (END)",
    )
    top_k: StrictInt | None = Field(None, ge=1, description="Return only this many top entries (LiteLLM sends it)")
    top_n: StrictInt | None = Field(None, ge=1, description="Alias of top_k; if both are given they must be equal")

    @model_validator(mode="after")
    def one_cut(self) -> RankingRequest:
        if self.top_k is not None and self.top_n is not None and self.top_k != self.top_n:
            raise ValueError(
                f"top_k ({self.top_k}) and top_n ({self.top_n}) are the same setting (top_n is an "
                "alias): send one of them"
            )
        return self


class Ranking(BaseModel):
    index: int = Field(description="Position of the passage in the request")
    logit: float = Field(description="Raw relevance logit (cosine similarity for bi-encoder models)")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RankingResponse(BaseModel):
    rankings: list[Ranking]
    usage: Usage


TokenIds = list[StrictInt] | list[list[StrictInt]]


class EmbeddingsRequest(Request):
    model_config = example({"input": [EXAMPLE_QUERY, EXAMPLE_PASSAGES[0]]})

    input: StrictStr | list[StrictStr] | TokenIds = Field(description="A string or a list of strings")
    model: StrictStr | None = None
    input_type: Literal["query", "passage"] | None = None
    truncate: Literal["NONE", "START", "END"] = "NONE"
    dimensions: StrictInt | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class HealthResponse(BaseModel):
    object: Literal["health.response"] = "health.response"
    message: str
    status: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelSourceInfo(BaseModel):
    path: str  # the folder loaded (a Hub repo's snapshot in the HF cache)
    repo_id: str | None = None  # the Hub repo, when the model came from one
    revision: str | None = None  # the revision asked for (None: the default branch)
    commit: str | None = None  # the commit served


class ModelInfo(BaseModel):
    shortName: str  # the served name
    modelName: str
    modelUrl: str = ""  # file://<the folder loaded>; empty while loading
    architecture: str | None = None
    kind: str | None = None
    maxLength: int | None = None
    backend: str | None = None
    precision: str | None = None
    source: ModelSourceInfo | None = None


class LicenseInfo(BaseModel):
    name: str = "Apache-2.0"
    path: str = ""
    sha: str = ""
    type: str = "rankserve"


class Metadata(BaseModel):
    """NIM's ``GET /v1/metadata``; the NGC-only keys are present and empty (no NGC profiles here)."""

    version: str
    modelInfo: list[ModelInfo]
    assetInfo: list[str] = []
    repository_override: str = ""
    selectedModelProfileId: str = ""
    licenseInfo: LicenseInfo = LicenseInfo()


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: int
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
    detail: Annotated[str | list, Field(description="Same message (or pydantic's field errors for 422)")]


# The error answers every route documents (OpenAPI ``responses``); their body is ErrorResponse.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in (
        (400, "Invalid request (wrong model, too long with truncate NONE, too many inputs)"),
        (401, "Missing or wrong API key (only when an API key is configured)"),
        (413, "Request body, a text or the request's tokens over a limit"),
        (422, "Schema validation failed"),
        (500, "Model failure"),
        (503, "Not ready yet, shutting down, or at capacity (see Retry-After)"),
        (504, "The request took longer than the request timeout; its queued work was dropped"),
    )
}
