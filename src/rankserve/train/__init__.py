"""``rankserve train``. The choices the command offers live here, not in mining.py / fit.py, so that
building the CLI parser imports none of their dependencies and every module imports them one way."""

METHODS = ("bm25", "dense", "both")  # first stages hard negatives come from ("both": interleaved)
LOSSES = ("bce", "listwise", "distill")  # distill: listwise toward labels mixed with the embedder's scores
TEACHERS = ("dense", "both")  # distill: the embedder alone, or the embedder and BM25 together
POSITIONS = ("any", "first")  # passage datasets: negatives' passages (as retrieved, or first of their page)
