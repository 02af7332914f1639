"""Loading text encoders: one line of ours naming what is missing, and no Hugging Face progress bars."""

from __future__ import annotations

from pathlib import Path

import pytest

import bifit
from bifit.modeling.text_encoder import TextEncoder


@pytest.mark.parametrize("make", ["absolute", "relative", "file"])
def test_a_missing_local_directory_is_named_in_one_line(tmp_path: Path, monkeypatch, make: str) -> None:
    monkeypatch.chdir(tmp_path)
    if make == "absolute":
        source, expected = str(tmp_path / "path" / "to" / "roberta-base"), "text encoder directory not found: "
    elif make == "relative":
        source, expected = "./roberta-base", "text encoder directory not found: ./roberta-base"
    else:
        (tmp_path / "weights.bin").write_bytes(b"x")
        source, expected = "weights.bin", "is not a directory"
    with pytest.raises(ValueError) as info:
        bifit.build_model("tiny", text_encoder=source)
    message = str(info.value)
    assert expected in message and source in message
    assert "\n" not in message and ".." not in message.replace("./", "").replace("../", "")
    assert "huggingface" not in message.lower() or make != "absolute"


def test_an_unknown_hub_id_gets_our_sentence(monkeypatch) -> None:
    import transformers

    def unavailable(name: str, *args, **kwargs):
        # What Hugging Face raises for an id that is neither cached nor downloadable (no network in tests).
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unavailable)
    with pytest.raises(ValueError) as info:
        TextEncoder.from_pretrained("no-such-org/no-such-encoder")
    message = str(info.value)
    assert message.startswith("cannot load the tokenizer of text encoder 'no-such-org/no-such-encoder': it is not a local directory")
    assert "\n" not in message and ".." not in message


def test_a_directory_without_model_files_says_what_failed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as info:
        TextEncoder.from_pretrained(tmp_path / "empty")
    message = str(info.value)
    assert message.startswith(f"cannot load the tokenizer of text encoder '{tmp_path / 'empty'}': ")
    assert "\n" not in message and not message.endswith(".")


def test_loading_shows_no_progress_bar_and_keeps_the_callers_setting(tiny_bert: Path, capfd) -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    TextEncoder.from_pretrained(tiny_bert)
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()
