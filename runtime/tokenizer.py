"""The bundle's tokenizer (Hugging Face ``tokenizers``, no transformers) and streaming decode."""

from __future__ import annotations

import json
from pathlib import Path

from quantkit.runtime.bundle import BundleError

__all__ = ["BundleTokenizer"]


class BundleTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer" / "tokenizer.json"
        if not path.is_file():
            raise BundleError(
                f"{folder}: no tokenizer/tokenizer.json in the bundle; pass token ids instead, or export the bundle from a model folder that has a tokenizer"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        config_path = folder / "tokenizer" / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        eos = config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_token_id = self.tokenizer.token_to_id(eos) if eos else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stream(self, ids: list[int], printed: int) -> tuple[str, int]:
        """(new text, characters printed so far) for ids generated so far: text is held
        back while it ends in an incomplete UTF-8 sequence (the replacement character)."""
        text = self.decode(ids)
        if text.endswith("\ufffd"):
            return "", printed
        return text[printed:], len(text)
