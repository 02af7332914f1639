"""The `bifit` command parses its arguments before importing torch: `--help` and argument errors
answer at once, and `import bifit` stays light until a model-related name is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "torchvision", "cv2", "av")

PROBE = """
import sys
from bifit.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
print("CODE", code)
print("LOADED", *sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["segment", "--help"], ["train", "--help"], ["pretrain-backbone", "--help"],
     ["segment", "video.mp4"], ["demo", "--clips"], ["no-such-command"]],
    ids=["help", "segment-help", "train-help", "pretrain-help", "missing-text", "missing-value", "unknown-command"],
)
def test_help_and_argument_errors_do_not_import_torch(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in done.stdout.splitlines()
                 if line.startswith(("CODE", "LOADED")))
    assert lines["CODE"] in ("0", "2"), done.stdout + done.stderr
    assert lines["LOADED"] == "", f"imported before parsing finished: {lines['LOADED']}"


def test_import_bifit_is_light_and_names_load_on_first_use() -> None:
    probe = (
        "import sys, bifit\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "print(bifit.Segmenter.__module__, bifit.build_model.__name__, 'torch' in sys.modules)\n"
        "print(sorted(set(bifit.__all__) - set(dir(bifit))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    first, second, third = out.stdout.splitlines()
    assert first == "[]"
    assert second == "bifit.inference.predictor build_model True"
    assert third == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        import bifit

        bifit.nothing_here  # noqa: B018
