"""Decoder rerankers that answer a question with a token: their prompts and score tokens, in one table.

Qwen3-Reranker, bge-reranker-v2-gemma and mxbai-rerank-v2 are causal LMs. Each is asked, in its own
prompt, whether a passage fits a query, and its relevance is read from the next-token logits at the
last position: z[yes] - z[no] (Qwen3, mxbai) or z[Yes] alone (bge-gemma). Only two rows of the LM
head matter, so at load time the head becomes an ordinary one-logit ``score`` layer,
``score.weight = W_lm[positive] - W_lm[negative]`` (computed in float32), and the full LM head is
dropped: the engine then sees a cross-encoder like any other (last-token pooling, causal attention),
and the logit it returns is the model's own log-odds (its sigmoid is the model's probability).

Each prompt is a ``rerank_template`` with ``{query}`` and ``{passage}``; the tokenizer's pair-free
template path truncates the passage first, then the query, and never the fixed prompt text. The
prompts are those in each model's reference code (model card / the authors' package), written as one
string: the references tokenize pieces separately and concatenate the ids, which matches encoding
the whole string wherever the pieces meet at a special token or a newline (as in all three).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rankserve.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
BGE_GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class RecipeChoice:
    """What the operator asked for (flags / config): all optional."""

    name: str | None = None  # --recipe
    instruction: str | None = None  # --instruction
    score_tokens: str | None = None  # --score-tokens POSITIVE[,NEGATIVE]
    template: str | None = None  # --rerank-template


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one decoder reranker is prompted and scored."""

    name: str
    positive: str | None  # the token whose logit means "relevant" (None: from --score-tokens)
    negative: str | None  # subtracted when given
    names: tuple[str, ...] = ()  # lower-case substrings of a folder or model name that select it
    takes_instruction: bool = False  # --instruction goes into the prompt
    instruction: str | None = None  # the default instruction, if the prompt always has one

    def template(self, instruction: str | None, custom: str | None) -> str:
        """The rerank template (a format string with {query} and {passage}), the instruction in it
        with its braces escaped: an instruction is text, never more fields."""
        if instruction is not None and not self.takes_instruction:
            raise ModelLoadError(f"--recipe {self.name} takes no --instruction")
        if self.name == "yes-no":
            if not custom:
                raise ModelLoadError("--recipe yes-no needs --rerank-template with {query} and {passage}")
            return custom
        if custom:
            raise ModelLoadError(f"--recipe {self.name} has its own prompt; --rerank-template is for --recipe yes-no")
        if instruction is not None:
            instruction = instruction.replace("{", "{{").replace("}", "}}")
        if self.name == "qwen3-reranker":
            body = (
                "<Instruct>: " + (instruction or self.instruction or "") + "\n<Query>: {query}\n<Document>: {passage}"
            )
            return QWEN3_PREFIX + body + QWEN3_SUFFIX
        if self.name == "mxbai-rerank-v2":
            lead = f"instruction: {instruction}\n" if instruction else ""
            return MXBAI_PREFIX + lead + "query: {query}\ndocument: {passage}\n" + MXBAI_TASK + MXBAI_SUFFIX
        return "A: {query}\nB: {passage}\n" + BGE_GEMMA_PROMPT  # bge-reranker-gemma (the tokenizer adds <bos>)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (  # config.RECIPE_NAMES lists these names (the CLI's choices)
        Recipe(
            name="qwen3-reranker",
            positive="yes",
            negative="no",
            names=("qwen3-reranker",),
            takes_instruction=True,
            instruction=QWEN3_INSTRUCTION,
        ),
        Recipe(name="bge-reranker-gemma", positive="Yes", negative=None, names=("bge-reranker-v2-gemma",)),
        Recipe(
            name="mxbai-rerank-v2",
            positive="1",
            negative="0",
            names=("mxbai-rerank-base-v2", "mxbai-rerank-large-v2"),
            takes_instruction=True,
        ),
        Recipe(name="yes-no", positive=None, negative=None),  # any causal LM: --rerank-template, --score-tokens
    )
}


def refuse_for_encoder(choice: RecipeChoice, arch: str) -> None:
    """Encoders (BERT, XLM-R, ModernBERT, DeBERTa) have their own head: a recipe is a mistake."""
    if choice.name or choice.instruction or choice.score_tokens:
        raise ModelLoadError(
            f"--recipe, --instruction and --score-tokens are for decoder rerankers; {arch} is an encoder"
        )


def detect(directory: Path, cfg: dict[str, Any]) -> Recipe | None:
    """The recipe a folder's name (or its config's ``_name_or_path``) names unambiguously, else None."""
    names = f"{directory.resolve().name} {cfg.get('_name_or_path', '')}".lower()
    found = [r for r in RECIPES.values() if any(n in names for n in r.names)]
    return found[0] if len(found) == 1 else None


def choose(name: str | None, directory: Path, cfg: dict[str, Any], arch: str) -> Recipe | None:
    """The recipe for this folder: the one asked for by name, else the one its name implies. A causal
    LM needs one (it has no ranking head of its own); other architectures take none."""
    causal_lm = arch.endswith("ForCausalLM")
    if name:
        if name not in RECIPES:
            raise ModelLoadError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
        if not (causal_lm or arch.endswith("ForSequenceClassification")):
            raise ModelLoadError(f"--recipe {name} is for decoder rerankers; {arch} is not one")
        return RECIPES[name]
    found = detect(directory, cfg) if (causal_lm or arch.endswith("ForSequenceClassification")) else None
    if causal_lm and found is None:
        raise ModelLoadError(
            f"{arch} is a causal LM: serve it as a reranker with --recipe "
            f"({' | '.join(RECIPES)}); yes-no takes --rerank-template and --score-tokens"
        )
    return found


def score_token_ids(recipe: Recipe, tokenizer_file: Path, score_tokens: str | None) -> tuple[int, int | None]:
    """(positive id, negative id or None): each token text's first id without special tokens, as the
    references take it (``tokenizer(word, add_special_tokens=False).input_ids[0]``)."""
    from tokenizers import Tokenizer

    if score_tokens:
        words = [w for w in score_tokens.split(",")]
        if not 1 <= len(words) <= 2 or not all(words):
            raise ModelLoadError(f"--score-tokens {score_tokens!r}: give POSITIVE or POSITIVE,NEGATIVE (e.g. yes,no)")
        positive, negative = words[0], (words[1] if len(words) == 2 else None)
    elif recipe.positive is None:
        raise ModelLoadError(f"--recipe {recipe.name} needs --score-tokens POSITIVE[,NEGATIVE] (e.g. yes,no)")
    else:
        positive, negative = recipe.positive, recipe.negative
    tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def first_id(word: str) -> int:
        ids = tokenizer.encode(word, add_special_tokens=False).ids
        if not ids:
            raise ModelLoadError(f"score token {word!r} encodes to nothing with {tokenizer_file}")
        return ids[0]

    return first_id(positive), (None if negative is None else first_id(negative))


def score_head(state: dict[str, torch.Tensor], positive: int, negative: int | None) -> dict[str, torch.Tensor]:
    """``state`` with the LM head replaced by the one-logit ``score.weight`` [1, H] (float32):
    W[positive] - W[negative], W being ``lm_head.weight`` or, when tied, the input embeddings."""
    lm = state.pop("lm_head.weight", None)
    if lm is None:
        lm = next((v for k, v in state.items() if k.endswith("embed_tokens.weight")), None)
    if lm is None:
        raise ModelLoadError("no lm_head.weight and no embed_tokens.weight to read the score tokens' rows from")
    for token in (positive, negative):
        if token is not None and not 0 <= token < lm.shape[0]:
            raise ModelLoadError(f"score token id {token} is outside the LM head's {lm.shape[0]} rows")
    row = lm[positive].float()
    if negative is not None:
        row = row - lm[negative].float()
    return {**state, "score.weight": row[None, :].contiguous()}
