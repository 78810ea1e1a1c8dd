"""The loader never unpickles a checkpoint and never runs code from the model folder.

README: "A `*.bin`/`*.pt` pickle is never loaded; convert it to safetensors first." and "no
`trust_remote_code`, never pickle"; models/loader.py: "``auto_map`` and ``trust_remote_code``
entries are ignored".

Every trap here has a visible side effect: unpickling the checkpoint, or importing a Python file
from the folder, creates a marker file outside the model folder. ``test_traps_are_live`` proves
each trap does fire when the file is really unpickled / executed, so a missing marker means the
loader never touched it.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import make_bert_cross_encoder
from conftest import app_client, wait_ready
from safetensors.torch import load_file

from rankserve.errors import ModelLoadError
from rankserve.models.loader import load_model

PICKLE_NAMES = ["pytorch_model.bin", "model.pt", "model.ckpt"]

# A module that, when executed (imported by transformers' dynamic-module loader, exec'd, ...),
# creates RAN_<its stem> in the folder above its own folder.
EVIL_CODE = """\
from pathlib import Path

_here = Path(__file__).resolve()
(_here.parent.parent / ("RAN_" + _here.stem)).write_text("code from the model folder was executed")


class EvilConfig:
    pass


class EvilModel:
    pass


class EvilTokenizer:
    pass
"""
EVIL_FILES = ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py")


class Trap:
    """Pickles as ``builtins.open(marker, "w")``: unpickling it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory) -> Path:
    """A real tiny BERT cross-encoder (config.json, tokenizer.json, model.safetensors)."""
    return make_bert_cross_encoder(tmp_path_factory.mktemp("loader") / "bert-ce")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def write_trap_pickle(path: Path, state: dict[str, torch.Tensor], marker: Path) -> None:
    """A real torch.save checkpoint: the model's tensors plus one entry that runs code when unpickled."""
    torch.save({**state, "trap": Trap(marker)}, path)


def pickle_only_folder(tiny_ce: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """config.json + tokenizer.json + only the weights as pickle ``name``. Returns (folder, marker)."""
    folder = copy_model(tiny_ce, tmp_path / "model")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    write_trap_pickle(folder / name, state, marker)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "tokenizer.json", name])
    return folder, marker


def test_traps_are_live(tiny_ce, tmp_path):
    """The same pickle and code files DO create their markers when really unpickled / executed."""
    state = load_file(str(tiny_ce / "model.safetensors"))
    marker = tmp_path / "UNPICKLED"
    write_trap_pickle(tmp_path / "pytorch_model.bin", state, marker)
    assert not marker.exists()
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.exists()

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "modeling_evil.py").write_text(EVIL_CODE)
    runpy.run_path(str(tmp_path / "pkg" / "modeling_evil.py"))
    assert (tmp_path / "RAN_modeling_evil").exists()


@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_pickle_only_folder_is_refused_and_never_unpickled(tiny_ce, tmp_path, name):
    folder, marker = pickle_only_folder(tiny_ce, tmp_path, name)
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(folder)
    assert not marker.exists(), f"{name} was unpickled"


@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_refusal_names_the_pickle_and_says_convert_to_safetensors(tiny_ce, tmp_path, name):
    folder, marker = pickle_only_folder(tiny_ce, tmp_path, name)
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert not marker.exists()
    message = info.value.message
    assert name in message, message
    assert "convert" in message and "safetensors" in message.split("convert", 1)[1], message


def test_safetensors_is_loaded_and_a_pickle_beside_it_is_not(tiny_ce, tmp_path):
    """Hub folders often ship both: the safetensors weights load, the .bin is never opened as pickle."""
    folder = copy_model(tiny_ce, tmp_path / "model")
    state = load_file(str(folder / "model.safetensors"))
    marker = tmp_path / "UNPICKLED"
    write_trap_pickle(folder / "pytorch_model.bin", state, marker)
    spec = load_model(folder)
    assert not marker.exists()
    assert spec.kind == "cross-encoder"
    torch.testing.assert_close(
        spec.module.state_dict()["classifier.weight"], state["classifier.weight"], rtol=0, atol=0
    )


def test_index_naming_a_pickle_shard_is_refused_and_never_unpickled(tiny_ce, tmp_path):
    """model.safetensors.index.json whose weight_map points at a pickle: a ModelLoadError naming the
    shard (the CLI prints it as one line), and the pickle is never unpickled."""
    folder, marker = pickle_only_folder(tiny_ce, tmp_path, "pytorch_model.bin")
    state = load_file(str(tiny_ce / "model.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in state}})
    )
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_model(folder)
    assert not marker.exists()


def test_auto_map_code_in_the_folder_is_never_run(tiny_ce, tmp_path):
    """config.json / tokenizer_config.json ``auto_map`` naming Python files in the folder (and
    ``trust_remote_code: true``): the model loads with our own BERT code and serves, nothing is run."""
    folder = copy_model(tiny_ce, tmp_path / "model")
    for name in EVIL_FILES:
        (folder / name).write_text(EVIL_CODE)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
    }
    cfg["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, "model_max_length": 128})
    )
    markers = [tmp_path / ("RAN_" + Path(name).stem) for name in EVIL_FILES]

    spec = load_model(folder)
    assert spec.architecture == "BertForSequenceClassification" and spec.kind == "cross-encoder"
    state = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(
        spec.module.state_dict()["classifier.weight"], state["classifier.weight"], rtol=0, atol=0
    )

    # The whole serving path too: config, engine, tokenizer, warm-up, a ranking request.
    with app_client(model=str(folder), served_model_name="tiny-ce-auto-map") as client:
        wait_ready(client)
        r = client.post(
            "/v1/ranking",
            json={
                "query": {"text": "how do i list files"},
                "passages": [{"text": "the ls command lists files"}, {"text": "banana is a fruit"}],
            },
        )
        assert r.status_code == 200, r.text
        assert sorted(x["index"] for x in r.json()["rankings"]) == [0, 1]

    assert [m.name for m in markers if m.exists()] == []
    assert not [m for m in sys.modules if m.endswith("_evil")]


def test_label_count_comes_from_the_head_weights_not_id2label(tmp_path):
    """A config listing two labels over a one-row head loads (the weights decide); a head with two
    rows is refused whatever the config says."""
    import json

    from llama_checkpoints import make_nvidia_reranker
    from safetensors.torch import load_file, save_file

    directory = make_nvidia_reranker(tmp_path / "m")
    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, "id2label": {"0": "A", "1": "B"}}))
    assert load_model(directory).kind == "cross-encoder"
    state = load_file(str(directory / "model.safetensors"))
    state["score.weight"] = torch.cat([state["score.weight"]] * 2)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg))  # id2label: one label
    with pytest.raises(ModelLoadError, match="2 labels: only one-logit cross-encoders rank"):
        load_model(directory)
