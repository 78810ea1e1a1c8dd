"""The packaged default model's package pulls sentence-transformers, transformers, scipy and
scikit-learn (~340 MB) that serving never imports: README's slim install and the image drop them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sentence_transformers", "transformers", "scipy", "sklearn")

CODE = """
import asyncio, json, sys
from rankserve.config import load_config
from rankserve.engine.engine import Engine
from rankserve.metrics import Metrics
from rankserve.models.model_dir import default_model_dir
async def main():
    engine = Engine.load(load_config({"dtype": "float32"}, environ={}), Metrics())
    await engine.start()
    result = await engine.rank("how do I list files", ["ls lists files", "the sky is blue"], "END")
    vectors = await engine.embed(["ls lists files"], None, "NONE", None)
    await engine.stop()
    return result.scores, vectors.vectors.shape
scores, shape = asyncio.run(main())
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"scores": scores, "shape": list(shape), "heavy": heavy, "model": str(default_model_dir())}))
"""


def test_serving_the_default_model_imports_none_of_its_packages_dependencies():
    out = subprocess.run([sys.executable, "-c", CODE, json.dumps(HEAVY)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["scores"][0] > result["scores"][1] and result["shape"] == [1, 384]
    assert result["heavy"] == [], result["heavy"]
