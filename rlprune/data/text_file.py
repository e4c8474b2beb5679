"""A local text file as language-modelling data, through a Hugging Face tokenizer (``data=text_file``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError, DataError


def load_text_file_arrays(
    path: str | None, tokenizer: str | None, size: int, test_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The file ``path`` tokenized by the tokenizer saved in the folder ``tokenizer``, as
    ``(x, y, x_test, y_test)``: consecutive blocks of ``size + 1`` tokens, inputs the first ``size``
    of each and targets the last ``size``; the file's last ``test_fraction`` of blocks is the test split.

    Raises:
        ConfigError: when the path or tokenizer is unset, or ``transformers`` is not installed.
        DataError: when the file is missing or too short for two blocks.
    """
    if not path:
        raise ConfigError("data.path is not set: name the text file to read (data.path=...)")
    if not tokenizer:
        raise ConfigError("data.tokenizer is not set: name the folder that holds the tokenizer")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path}: no such file")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ConfigError("data=text_file needs transformers: pip install 'rlprune[hf]'") from exc
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"data.tokenizer={tokenizer}: no such folder (it holds the model's tokenizer)")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.tokenizer={tokenizer}: no tokenizer can be loaded from it: {exc}") from exc
    ids = np.asarray(tok(file.read_text(), verbose=False)["input_ids"], dtype=np.int64)
    blocks = len(ids) // (size + 1)
    test = max(1, round(test_fraction * blocks))
    if blocks - test < 2:
        raise DataError(
            f"data.path={path} holds {len(ids)} tokens: too few for train and test blocks of "
            f"data.size={size}; give a longer text or a smaller data.size"
        )
    rows = ids[: blocks * (size + 1)].reshape(blocks, size + 1)
    train, held = rows[:-test], rows[-test:]
    return train[:, :-1], train[:, 1:], held[:, :-1], held[:, 1:]
