"""Shared fixtures: tiny text encoders built offline, so no test touches the network."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

CORPUS = [
    "the man in the red shirt riding a bike",
    "a dog running on the grass to the left",
    "the small red circle moving left",
    "the big blue square at the top",
    "a green triangle moving right at the bottom",
    "the yellow star in the middle of the frame",
    "a woman holding an umbrella walking right",
    "the car parked on the right side of the road",
]


def build_tiny_text_encoder(directory: Path, kind: str = "bert") -> Path:
    """Write a tiny randomly initialised encoder + tokenizer for CORPUS into `directory`.

    Both are the same in every process (seeded weights; a WordPiece vocabulary listed rather than trained,
    as the WordPiece trainer breaks ties differently from run to run), so a failure reproduces.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    directory.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words = sorted({word for sentence in CORPUS for word in sentence.lower().split()})
        letters = sorted({letter for word in words for letter in word})
        # dict.fromkeys: one-letter words ("a") are also letters.
        vocab = dict.fromkeys(specials + words + letters + [f"##{letter}" for letter in letters])
        tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=32,
        )
        config = BertConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, pad_token_id=tok.token_to_id("[PAD]"),
        )
        model_class = BertModel
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(
            CORPUS * 4,
            trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
        )
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            cls_token="<s>", sep_token="</s>", mask_token="<mask>",
        )
        config = RobertaConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
        )
        model_class = RobertaModel
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_class(config)
    fast.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The suite's models are small: intra-op threads only add overhead at these sizes, and on a busy
    2-core machine OpenMP threads spinning against other processes make runs many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_thread_count_leaks():
    """A test that runs a benchmark's main() (which sets its own thread count) must not leave that
    count to the tests after it: their in-process runs are compared bit for bit with runs in
    subprocesses (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny_roberta"), "roberta")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Iterator[Path]:
    """A directory for the files one test module shares (checkpoints, training runs), removed when
    the module is done: kept to the session's end, the suite's checkpoints add up to gigabytes."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)
