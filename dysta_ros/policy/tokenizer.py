"""Instruction tokenizers: bytes for presets, or a tokenizer.json shipped in a checkpoint."""

from __future__ import annotations

from pathlib import Path

from dysta_ros.errors import CheckpointError

BOS, EOS = 256, 257
MAX_TEXT_TOKENS = 48  # instructions are short; a cap keeps the context length bounded


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, wrapped in BOS / EOS."""

    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode("utf-8"))[: MAX_TEXT_TOKENS - 2]
        return [BOS, *ids, EOS]


class FileTokenizer:
    """A `tokenizers` tokenizer.json from a local checkpoint directory (no remote code)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on bad files
            raise CheckpointError(f"{path}: cannot load tokenizer: {exc}") from exc
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids[:MAX_TEXT_TOKENS]

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))


TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_KINDS = ("bytes", "file")  # the values of a checkpoint config's `tokenizer` key


def tokenizer_kind(tokenizer) -> str:
    """Return what a checkpoint records for `tokenizer`: 'file' (saved beside it) or 'bytes'."""
    return "file" if isinstance(tokenizer, FileTokenizer) else "bytes"


def load_tokenizer(directory: Path | None, recorded: str | None = None):
    """Return the tokenizer a checkpoint was built with; no directory (a preset) means bytes.

    `recorded` is its config's `tokenizer` key. Checkpoints from before the key was written use
    their tokenizer.json when they ship one, else bytes (what `dysta-ros train` always used).
    """
    if directory is None:
        return ByteTokenizer()
    path = Path(directory) / TOKENIZER_FILE
    if recorded is None:
        recorded = "file" if path.is_file() else "bytes"
    if recorded not in TOKENIZER_KINDS:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: tokenizer {recorded!r} is not one of "
                              f"{', '.join(TOKENIZER_KINDS)}")
    if recorded == "bytes":
        if path.is_file():  # which one was it trained with? Guessing would run the wrong one silently
            raise CheckpointError(f"{path}: present, but config.json says tokenizer 'bytes'; "
                                  "remove the file or set tokenizer 'file'")
        return ByteTokenizer()
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (config.json says tokenizer 'file', and its model "
                              "was trained with that tokenizer)")
    return FileTokenizer(path)


def model_tokenizer(model):
    """Return the tokenizer a model was built with: a loaded checkpoint's own, else bytes (presets)."""
    return getattr(model, "tokenizer", None) or ByteTokenizer()
