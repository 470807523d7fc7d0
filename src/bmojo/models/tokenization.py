"""`BMojoByteTokenizer`: the byte-level tokenizer (`bmojo.data.ByteTokenizer`) as a Hugging Face tokenizer, so that
`AutoTokenizer`, `pipeline("text-generation")`, padding and `save_pretrained` work as with any HF model.

Ids 0..255 are the UTF-8 bytes; their tokens are "<0xNN>". Byte 0 (NUL) is the end-of-document token that
`bmojo train` packs documents with, and also the pad token (padding goes on the left, as generation needs).
"""

from __future__ import annotations

from transformers.tokenization_python import PythonBackend

from .remote import write_remote_code_shim

BYTES = 256


def _byte_token(value: int) -> str:
    return f"<0x{value:02X}>"


class BMojoByteTokenizer(PythonBackend):
    """UTF-8 bytes as ids (vocab 256); eos = pad = byte 0; no other special tokens; left padding."""

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs):
        self._vocab = {_byte_token(i): i for i in range(BYTES)}
        kwargs.setdefault("eos_token", _byte_token(0))
        kwargs.setdefault("pad_token", _byte_token(0))
        kwargs.setdefault("padding_side", "left")
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return BYTES

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [_byte_token(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        return self._vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        return _byte_token(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return bytes(self._vocab[t] for t in tokens).decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed: nothing to write

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HF's save, plus what loading without `import bmojo` needs (see `bmojo.models.remote`)."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code_shim(save_directory, tokenizer=True)
        return files
