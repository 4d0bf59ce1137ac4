"""The atheris runner both fuzz scripts share: a seeded corpus and a libFuzzer dictionary in a temporary folder."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

import atheris


def fuzz(name: str, seed_corpus: Callable[[Path], None], dictionary: str, test_one_input: Callable[[bytes], None],
         *, max_len: int, rss_limit_mb: int) -> None:
    """Run atheris over a seeded corpus with `dictionary` (libFuzzer's format); libFuzzer's arguments pass through."""
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    seed_corpus(corpus)
    dict_file = work / f"{name}.dict"
    dict_file.write_text(dictionary, encoding="utf-8")
    args = [sys.argv[0], f"-dict={dict_file}", f"-max_len={max_len}", f"-rss_limit_mb={rss_limit_mb}", "-timeout=10",
            f"-artifact_prefix={work}/", *sys.argv[1:], str(corpus)]
    print(f"corpus, dictionary and findings in {work}", file=sys.stderr)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
