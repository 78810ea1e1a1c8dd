"""Long inputs cost what the model reads: a ~5 MB ranking request whose passages the model cuts to
its limit, against the same request with each passage already cut to the text it keeps.

A MiniLM-L6 cross-encoder (all-MiniLM-L6-v2's weights, a random head) in an in-process ``Engine`` (no HTTP), ``--passages``
passages of ``--chars`` characters of English-like text each (default 50 x 100,000 = 5 MB, within
the server's default 8 MiB body and 100,000-character text limits). Prints, best of ``--rounds``:
tokenizing alone (``TokenizerPolicy.pairs``) and the whole ``Engine.rank`` for the long request
and for the pre-cut one, the difference (the target is <= 0.5 s), and whether the scores are the
same bits. Also the CPU it ran on.

    python bench/long_inputs.py [--passages 50] [--chars 100000] [--rounds 3] [--truncate END]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_line, minilm_cross_encoder, text_of  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402


def long_text(chars: int, rng: random.Random) -> str:
    parts, size = [], 0
    while size < chars:
        parts.append(text_of(200, rng))
        size += len(parts[-1]) + 1
    return " ".join(parts)[:chars]


def best(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=50)
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--truncate", default="END", choices=["END", "CHUNK"])
    args = ap.parse_args()
    rng = random.Random(0)
    query = "how do i change the permissions of a file"
    passages = [long_text(args.chars, rng) for _ in range(args.passages)]
    directory = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    # No score cache: every round runs the model.
    engine = Engine.load(load_config({"model": str(directory), "cache_size": 0}, environ={}), Metrics())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())
    policy = engine.policy
    # What each passage keeps, cut by hand: 12 characters per token of the limit hold more than it reads.
    kept = [p[: 12 * policy.max_length] for p in passages]
    print(
        f"cpu: {cpu_line()}; {args.passages} passages x {args.chars:,} chars = "
        f"{sum(map(len, passages)) / 1e6:.1f} MB; model limit {policy.max_length} tokens; truncate {args.truncate}"
    )
    rank = lambda ps: loop.run_until_complete(engine.rank(query, ps, args.truncate))  # noqa: E731
    t_tok_long, long_enc = best(lambda: policy.pairs(query, passages, "END"), args.rounds)
    t_tok_cut, cut_enc = best(lambda: policy.pairs(query, kept, "END"), args.rounds)
    assert [e.ids for e in long_enc] == [e.ids for e in cut_enc], "the pre-cut passages keep other tokens"
    t_long, long_result = best(lambda: rank(passages), args.rounds)
    t_cut, cut_result = best(lambda: rank(kept), args.rounds)
    same = list(long_result.scores) == list(cut_result.scores)
    print(f"tokenize: long {t_tok_long:.3f} s, pre-cut {t_tok_cut:.3f} s")
    print(
        f"Engine.rank: long {t_long:.3f} s, pre-cut {t_cut:.3f} s, over the kept tokens' cost "
        f"{t_long - t_cut:+.3f} s (target <= 0.5 s); same scores: {same}"
    )
    loop.run_until_complete(engine.stop())


if __name__ == "__main__":
    main()
