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


def load_tokenizer(directory: Path | None):
    """Return the checkpoint's tokenizer.json tokenizer if there is one, else bytes."""
    if directory is not None and (Path(directory) / "tokenizer.json").is_file():
        return FileTokenizer(Path(directory) / "tokenizer.json")
    return ByteTokenizer()
