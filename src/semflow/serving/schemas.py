"""Request bodies of the HTTP contract (pydantic) and the limits checked on them.

Shape errors (wrong types, empty list, empty text) are 422; size errors (too many texts,
a text longer than `max_text_chars`) are 413 -- texts are never silently truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
)

from semflow.config import Settings
from semflow.serving.errors import PayloadTooLarge, Unprocessable

Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]
_STRICT = ConfigDict(extra="forbid")


class EmbedRequest(BaseModel):
    model_config = _STRICT
    texts: list[Text] = Field(min_length=1, description="Texts to embed.")
    normalize: bool = Field(default=True, description="L2-normalise each vector.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="float: JSON numbers; base64: each vector's little-endian float32 bytes.",
    )


class SimilarityRequest(BaseModel):
    model_config = _STRICT
    pairs: list[tuple[Text, Text]] = Field(min_length=1, description="[a, b] text pairs.")


class SearchRequest(BaseModel):
    model_config = _STRICT
    query: Text
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    top_k: int = Field(default=10, ge=1)
    score_threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="A bound on the cosine similarity: dense search only (the default mode "
        "when this is given).",
    )
    filters: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(
        default=None,
        description="dense (embeddings), sparse (BM25 over the model's tokens) or hybrid "
        "(both, fused by reciprocal rank); default: the server's search_mode.",
    )


class ClassifyRequest(BaseModel):
    model_config = _STRICT
    texts: list[Text] = Field(min_length=1)
    top_k: int = Field(default=1, ge=1)
    tenant: str = Field(default="", max_length=128, description="Recorded in the prediction log.")


class Candidate(BaseModel):
    model_config = _STRICT
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    text: Text
    features: dict[str, float] = Field(default_factory=dict)


class RankRequest(BaseModel):
    model_config = _STRICT
    query: Text
    candidates: list[Candidate] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)


class EmbedJobRequest(BaseModel):
    """A long embed job (`POST /embed_job/submit`): normalised vectors of many texts."""

    model_config = _STRICT
    texts: list[Text] = Field(min_length=1)


class ClassifyJobRequest(BaseModel):
    """A long classify job (`POST /classify_job/submit`)."""

    model_config = _STRICT
    texts: list[Text] = Field(min_length=1)
    top_k: int = Field(default=1, ge=1)
    tenant: str = Field(default="", max_length=128)


class EncodeRequest(BaseModel):
    """The raw batched `/encode` body; its answer is a bare list of vectors."""

    model_config = _STRICT
    texts: list[Text] = Field(min_length=1)


def _text_list(value: Any, what: str, allow_objects: bool = False) -> list[Any]:
    """The items of a compatible route's text list, with one clear sentence for what is wrong
    (pydantic's union errors name every branch); the field types check the rest."""
    if not isinstance(value, list):
        kinds = "strings or objects with a 'text' field" if allow_objects else "strings"
        either = "" if allow_objects else "a string or "
        raise ValueError(f"{what} must be {either}a list of {kinds}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise ValueError(f"{what}[{i}] is an empty string")
        elif allow_objects and isinstance(item, dict):
            if not isinstance(item.get("text"), str) or not item["text"]:
                raise ValueError(f"{what}[{i}] is an object without a non-empty 'text' string")
        elif isinstance(item, int | list) and not isinstance(item, bool) and not allow_objects:
            raise ValueError(
                "token arrays are not supported: send the text itself (a string or a list "
                "of strings); tokens from another model's tokenizer mean nothing to this one"
            )
        else:
            kinds = "a string or an object with a 'text' field" if allow_objects else "a string"
            raise ValueError(f"{what}[{i}] must be {kinds}, not {type(item).__name__}")
    return value


ModelId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class OpenAIEmbeddingsRequest(BaseModel):
    """`POST /v1/embeddings`, OpenAI's body. Token arrays are refused (see `_text_list`)."""

    model_config = _STRICT
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: ModelId = Field(description="An embedding model id listed by GET /v1/models.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, ge=1, description="Accepted only when equal to the model's dimension."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("input is an empty string")
            return value
        return _text_list(value, "input")

    @property
    def texts(self) -> list[str]:
        """The texts to embed (the guard checks their count and length as /embed's)."""
        return [self.input] if isinstance(self.input, str) else self.input


class RerankDocument(BaseModel):
    """A document given as an object: `text` is ranked; other fields come back unchanged."""

    model_config = ConfigDict(extra="allow")
    text: Text


class RerankRequest(BaseModel):
    """`POST /v1/rerank`, the Cohere (v1) / Jina body."""

    model_config = _STRICT
    query: Text
    documents: list[Text | RerankDocument] = Field(
        description="Strings, or objects with a `text` field."
    )
    top_n: int | None = Field(default=None, ge=1)
    return_documents: StrictBool = False  # "yes" is a mistake, not True
    model: ModelId | None = Field(default=None, description="The ranker's id, if given.")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        return _text_list(value, "documents", allow_objects=True)

    @property
    def texts(self) -> list[str]:
        """The documents' texts (the guard checks their count and length as /rank's)."""
        return [d if isinstance(d, str) else d.text for d in self.documents]


# path -> body model, used by the HTTP guard to validate before the endpoint runs.
ROUTES: dict[str, type[BaseModel]] = {
    "/embed": EmbedRequest,
    "/encode": EncodeRequest,
    "/similarity": SimilarityRequest,
    "/search": SearchRequest,
    "/classify": ClassifyRequest,
    "/rank": RankRequest,
    "/embed_job/submit": EmbedJobRequest,
    "/classify_job/submit": ClassifyJobRequest,
    "/v1/embeddings": OpenAIEmbeddingsRequest,
    "/v1/rerank": RerankRequest,
}
JOB_ROUTES = frozenset({"/embed_job/submit", "/classify_job/submit"})


MAX_JSON_DEPTH = 32  # the deepest legitimate body (rank candidates' features) is 4


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoded JSON nests at most `limit` levels (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return False
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def describe(err: ValidationError) -> str:
    """One sentence naming each bad field."""
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    more = "" if err.error_count() <= 5 else f" (and {err.error_count() - 5} more)"
    return "invalid request: " + "; ".join(parts) + more


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    """Validate a decoded JSON body; Unprocessable (422) with a readable message otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise Unprocessable(describe(err)) from None


def check_texts(texts: Sequence[str], settings: Settings, max_count: int | None = None) -> None:
    """413 when there are too many texts or one is longer than `max_text_chars`."""
    limit = max_count or settings.max_texts
    if len(texts) > limit:
        raise PayloadTooLarge(f"too many texts: {len(texts)} > {limit} per request")
    for i, t in enumerate(texts):
        if len(t) > settings.max_text_chars:
            raise PayloadTooLarge(
                f"text {i} has {len(t)} characters; the limit is {settings.max_text_chars}"
            )
