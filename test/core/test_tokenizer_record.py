"""No silent tokenizer: a checkpoint records which one it was built with, and gets that one or an error."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from dysta_ros.errors import CheckpointError
from dysta_ros.policy.checkpoint import save_checkpoint
from dysta_ros.policy.runtime import build_model, build_runtime
from dysta_ros.policy.tokenizer import ByteTokenizer, FileTokenizer

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"
WORDS = {"[UNK]": 0, "pick": 1, "up": 2, "the": 3, "red": 4, "block": 5}


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_model("tiny")
    return model


def words_tokenizer(path: Path) -> FileTokenizer:
    words = Tokenizer(models.WordLevel(WORDS, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.save(str(path))
    return FileTokenizer(path)


def config_of(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def set_config(directory: Path, **changes) -> None:
    data = {**config_of(directory), **changes}
    (directory / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def test_saving_records_the_tokenizer_kind(tmp_path, tiny):
    save_checkpoint(tmp_path / "bytes", tiny)
    assert config_of(tmp_path / "bytes")["tokenizer"] == "bytes"
    assert not (tmp_path / "bytes" / "tokenizer.json").exists()
    save_checkpoint(tmp_path / "file", tiny, tokenizer=words_tokenizer(tmp_path / "words.json"))
    assert config_of(tmp_path / "file")["tokenizer"] == "file"
    assert (tmp_path / "file" / "tokenizer.json").is_file()


def test_a_checkpoint_that_names_a_tokenizer_file_and_lacks_it_is_refused(tmp_path, tiny):
    save_checkpoint(tmp_path / "ckpt", tiny, tokenizer=words_tokenizer(tmp_path / "words.json"))
    (tmp_path / "ckpt" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt/tokenizer.json: missing"):
        build_runtime(str(tmp_path / "ckpt"), "full")


def test_a_bytes_checkpoint_that_ships_a_tokenizer_file_is_refused(tmp_path, tiny):
    save_checkpoint(tmp_path / "ckpt", tiny)
    words_tokenizer(tmp_path / "ckpt" / "tokenizer.json")
    with pytest.raises(CheckpointError, match="present, but config.json says tokenizer 'bytes'"):
        build_model(str(tmp_path / "ckpt"))


def test_an_unknown_tokenizer_kind_names_the_allowed_ones(tmp_path, tiny):
    save_checkpoint(tmp_path / "ckpt", tiny)
    set_config(tmp_path / "ckpt", tokenizer="sentencepiece")
    with pytest.raises(CheckpointError, match="tokenizer 'sentencepiece' is not one of bytes, file"):
        build_model(str(tmp_path / "ckpt"))


def test_rebuilding_a_runtime_from_a_loaded_model_keeps_its_tokenizer(tmp_path, tiny):
    # The node's strategy switch and bench build runtimes from the model object, not the path.
    save_checkpoint(tmp_path / "ckpt", tiny, tokenizer=words_tokenizer(tmp_path / "words.json"))
    loaded = build_runtime(str(tmp_path / "ckpt"), "full")
    rebuilt = build_runtime(loaded.model, "dysta")
    assert rebuilt.tokenizer.encode("pick up the red block") == [1, 2, 3, 4, 5]
    model, tokenizer = build_model(loaded.model)
    assert tokenizer.encode("red block") == [4, 5]
    # ...and saving that model again keeps the file, without being handed the tokenizer
    save_checkpoint(tmp_path / "again", model)
    assert config_of(tmp_path / "again")["tokenizer"] == "file"
    assert build_runtime(str(tmp_path / "again"), "full").tokenizer.encode("the") == [3]


def test_checkpoints_from_before_the_record_use_what_they_ship(tmp_path, tiny):
    save_checkpoint(tmp_path / "file", tiny, tokenizer=words_tokenizer(tmp_path / "words.json"))
    set_config(tmp_path / "file", tokenizer=None)
    assert isinstance(build_model(str(tmp_path / "file"))[1], FileTokenizer)
    save_checkpoint(tmp_path / "bytes", tiny)
    set_config(tmp_path / "bytes", tokenizer=None)
    assert isinstance(build_model(str(tmp_path / "bytes"))[1], ByteTokenizer)


@pytest.mark.parametrize("name", ["reference", "memory"])
def test_shipped_checkpoints_record_and_get_bytes(name):
    # `dysta-ros train` built them with ByteTokenizer (the only one it uses)
    assert config_of(SHIPPED / name)["tokenizer"] == "bytes"
    _, tokenizer = build_model(str(SHIPPED / name))
    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.encode("hi") == ByteTokenizer().encode("hi")
