"""Scores beyond sacreBLEU's defaults (nmt/metrics.py): BLEU by source-length bucket, and
paper-style BLEU (lowercased, Moses-tokenized), also as `nmt evaluate --lang` prints it."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import write


def test_bleu_by_source_length_buckets() -> None:
    from nmt.metrics import bleu_by_length

    short = "a b c d e"  # 5 words
    long = " ".join("w" * (i % 7 + 1) for i in range(30))  # 30 words
    srcs = [short, short, long, long]
    refs = [
        "Ein Hund rennt im Park.",
        "Zwei Kinder spielen im Sand.",
        "Ein Mann fährt mit dem Rad den Berg hinab.",
        "Eine Frau liest ein Buch im Garten unter einem Baum.",
    ]
    hyps = [refs[0], refs[1], "Völlig anders.", "Nichts davon stimmt hier."]
    buckets = bleu_by_length(srcs, hyps, refs)
    assert [(b["source_words"], b["sentences"]) for b in buckets] == [("1-10", 2), ("26+", 2)]
    assert buckets[0]["bleu"] == 100.0 and buckets[1]["bleu"] < 10.0


def test_paper_style_bleu_lowercases_and_moses_tokenizes(cli, tmp_path: Path) -> None:
    from nmt.metrics import paper_bleu, score_all

    # case and detached punctuation do not count against
    # a hypothesis (Moses splits "Rad." and "(links)")
    refs = ["Ein Mann fährt mit dem Rad (links) nach Hause.", "Zwei Hunde spielen im Schnee."]
    hyps = ["ein mann fährt mit dem rad ( links ) nach hause .", "zwei Hunde spielen im Schnee ."]
    m = score_all(hyps, refs, "de")
    assert m["bleu_paper"]["score"] == 100.0 and m["bleu"]["score"] < 100.0
    assert "bleu_paper" not in score_all(hyps, refs)
    # Moses knows German abbreviations: "z.B." is one token (13a makes four of it, all matching): 10
    # tokens, not 13
    p = paper_bleu(
        ["er sagt z.B. dass eine Katze im Garten sitzt."],
        ["Er sagt z.B. dass ein Hund im Park rennt."],
        "de",
    )
    assert (
        "hyp_len = 10 ref_len = 10" in p["text"]
        and p["score"]
        < score_all(
            ["er sagt z.B. dass eine Katze im Garten sitzt."],
            ["Er sagt z.B. dass ein Hund im Park rennt."],
        )["bleu_lc"]["score"]
    )
    ref_file, hyp_file = (
        write(tmp_path / "ref.txt", "\n".join(refs) + "\n"),
        write(tmp_path / "hyp.txt", "\n".join(hyps) + "\n"),
    )
    code, out, err = cli("evaluate", "--hyp", hyp_file, "--ref", ref_file, "--lang", "de")
    assert code in (0, None) and err == "", err
    assert "paper-style BLEU (lowercased, Moses-tokenized): 100.00" in out
