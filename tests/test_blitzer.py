"""The raw Multi-Domain Sentiment tarball converter (spacy_rnn/corpus/blitzer.py),
on tiny tarballs built here from hand-written reviews."""
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_rnn.corpus.amazon import convert_amazon, split_of
from spacy_rnn.corpus.blitzer import BlitzerFormatError, convert_blitzer, iter_blitzer


def review(uid: str, asin: str, rating: str, title: str, text: str, *, inline: bool = False) -> str:
    """One review in the tarball's layout (tags on their own lines), or with
    inline tags when ``inline``."""
    fields = [
        ("unique_id", uid),
        ("unique_id", "17"),  # the files repeat unique_id; the first one counts
        ("asin", asin),
        ("product_name", "Some product: Books: Someone"),
        ("product_type", "books"),
        ("product_type", "books"),
        ("helpful", "1 of 2"),
        ("rating", rating),
        ("title", title),
        ("date", "March 3, 2006"),
        ("reviewer", 'J. Doe "jd"'),
        ("reviewer_location", "Somewhere, USA"),
        ("review_text", text),
    ]
    if inline:
        body = "".join(f"<{t}>{v}</{t}>\n" for t, v in fields)
    else:
        body = "".join(f"<{t}>\n{v}\n</{t}>\n" for t, v in fields)
    return f"<review>\n{body}</review>\n"


POSITIVE = (
    review("0785758968:great_read:joseph_m", "0785758968", "5.0", "Great read",
           "Sphere is an excellant novel. \n\nI would strongly recommend it & more.")
    + review("0452279550:caf\xe9_stories:wafa", "0452279550", "4.0", "Caf\xe9 stories \u2013 fine",
             "Light & funny; &quot;quoted&quot; <b>bold</b> d\xe9j\xe0 vu.", inline=True)
)
NEGATIVE = review("1599620065:dull:sarah_silva", "1599620065", "1.0", "Dull", "Broke in a day.\nNever again.")
KITCHEN_NEG = review("B000001:bad_pan:x", "B000001", "2.0", "Bad pan", "It stuck.")


def make_tarball(path: Path, files: Dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tarball(tmp_path) -> Path:
    return make_tarball(
        tmp_path / "unprocessed.tar.gz",
        {
            # Windows-1252 bytes, as in the real files (\x96 is an en dash).
            "sorted_data/books/positive.review": POSITIVE.encode("cp1252"),
            "sorted_data/books/negative.review": NEGATIVE.encode("cp1252"),
            "sorted_data/books/unlabeled.review": review("u:1:x", "u", "3.0", "Meh", "Skipped.").encode(),
            "sorted_data/kitchen_&_housewares/negative.review": KITCHEN_NEG.encode("cp1252"),
            "sorted_data/stopwords": b"a\nthe\n",
        },
    )


def test_records_match_the_reviews_jsonl_schema(tarball):
    records = list(iter_blitzer(tarball))
    assert [r["label"] for r in records] == ["positive", "positive", "negative", "negative"]
    assert [r["domain"] for r in records] == ["books", "books", "books", "kitchen_&_housewares"]
    first, second = records[0], records[1]
    assert list(first) == ["domain", "label", "rating", "asin", "unique_id", "title", "text"]
    assert first == {
        "domain": "books",
        "label": "positive",
        "rating": 5.0,
        "asin": "0785758968",
        "unique_id": "0785758968:great_read:joseph_m",
        "title": "Great read",
        "text": "Sphere is an excellant novel. \n\nI would strongly recommend it & more.",
    }
    # Inline tags, Windows-1252 decoding, entities and stray tags kept verbatim.
    assert second["unique_id"] == "0452279550:caf\xe9_stories:wafa"
    assert second["title"] == "Caf\xe9 stories \u2013 fine"
    assert second["text"] == "Light & funny; &quot;quoted&quot; <b>bold</b> d\xe9j\xe0 vu."
    assert records[2]["text"] == "Broke in a day.\nNever again."
    assert records[3]["rating"] == 2.0


def test_utf8_replace_decoding_matches_the_shared_jsonl_convention(tarball):
    # The shared reviews.jsonl has U+FFFD where the raw files have Latin-1 letters.
    records = list(iter_blitzer(tarball, decoding="utf8-replace"))
    assert records[1]["unique_id"] == "0452279550:caf\ufffd_stories:wafa"
    assert records[1]["title"] == "Caf\ufffd stories \ufffd fine"
    assert records[0] == list(iter_blitzer(tarball))[0]  # ASCII reviews are the same
    with pytest.raises(ValueError, match="decoding 'latin9'"):
        list(iter_blitzer(tarball, decoding="latin9"))


def test_domains_filter_and_unknown_domain(tarball):
    assert {r["domain"] for r in iter_blitzer(tarball, ["kitchen_&_housewares"])} == {"kitchen_&_housewares"}
    with pytest.raises(BlitzerFormatError, match="no review files for domain.*dvd"):
        list(iter_blitzer(tarball, ["books", "dvd"]))


def test_jsonl_feeds_convert_amazon_with_the_same_split(tarball, tmp_path):
    out = tmp_path / "reviews.jsonl"
    counts = convert_blitzer(tarball, out, corpus_dir=tmp_path / "direct")
    assert counts["books/positive"] == 2 and counts["books/negative"] == 1
    assert counts["kitchen_&_housewares/negative"] == 1
    lines = out.read_text(encoding="utf8").splitlines()
    assert len(lines) == 4 and json.loads(lines[1])["title"] == "Caf\xe9 stories \u2013 fine"
    via_jsonl = convert_amazon(str(out), tmp_path / "via_jsonl")
    direct = {s: counts[s] for s in ("train", "dev", "test")}
    assert via_jsonl == direct and sum(direct.values()) == 4
    # Same docs in the same splits either way, keyed by unique_id.
    for split in ("train", "dev", "test"):
        texts = []
        for folder in ("direct", "via_jsonl"):
            docs = []
            for shard in sorted((tmp_path / folder / f"{split}.spacy").glob("*.spacy")):
                docs.extend(DocBin().from_disk(shard).get_docs(spacy.blank("en").vocab))
            texts.append(sorted((d.text, d.cats["positive"]) for d in docs))
        assert texts[0] == texts[1]
    expected = sum(split_of(json.loads(l)["unique_id"]) == "test" for l in lines)
    assert direct["test"] == expected


@pytest.mark.parametrize(
    "text,line,problem",
    [
        # An unclosed field runs into </review>.
        (POSITIVE.replace("</review_text>\n</review>\n<review>", "</review>\n<review>", 1), 42, "</review> inside <review_text>"),
        # A review without its end.
        (POSITIVE.replace("</review>\n<review>", "<review>", 1), 43, "<review> before the previous review's </review>"),
        # No rating at all.
        (POSITIVE.replace("<rating>\n5.0\n</rating>\n", "", 1), 40, "no <rating>"),
        (POSITIVE.replace("<rating>\n5.0\n</rating>", "<rating>\nfive\n</rating>", 1), 43, "<rating> is 'five'"),
        (POSITIVE + "<review>\n<title>\nCut\n", 61, "end of file inside <title>"),
        (POSITIVE.replace("<asin>", "stray words\n<asin>", 1), 8, "text outside any field: 'stray words'"),
    ],
)
def test_malformed_review_names_member_and_line(tmp_path, text, line, problem):
    bad = make_tarball(tmp_path / "bad.tar.gz", {"sorted_data/books/positive.review": text.encode("cp1252")})
    with pytest.raises(BlitzerFormatError) as err:
        list(iter_blitzer(bad))
    message = str(err.value)
    assert "bad.tar.gz:sorted_data/books/positive.review" in message
    assert f"line {line}:" in message and problem in message


def test_cli_writes_nothing_on_error(tarball, tmp_path):
    good = tmp_path / "out" / "reviews.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-blitzer", str(tarball), str(good),
         "--domains", "books,kitchen_&_housewares", "--corpus-dir", str(tmp_path / "corpus")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(good.read_text(encoding="utf8").splitlines()) == 4
    assert (tmp_path / "corpus" / "train.spacy").is_dir()
    before = good.read_bytes()
    bad = make_tarball(
        tmp_path / "bad.tar.gz",
        {"sorted_data/dvd/negative.review": (NEGATIVE + "<review>\n<rating>\n1.0\n").encode()},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-blitzer", str(bad), str(good)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    out = " ".join((proc.stdout + proc.stderr).split())  # wasabi wraps lines
    assert "sorted_data/dvd/negative.review, line 45" in out and "end of file inside <rating>" in out
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == ["reviews.jsonl"]


def test_not_a_tarball(tmp_path):
    bogus = tmp_path / "x.tar.gz"
    bogus.write_bytes(b"not a tar")
    with pytest.raises(BlitzerFormatError, match="not a readable tar archive"):
        list(iter_blitzer(bogus))
    empty = make_tarball(tmp_path / "empty.tar.gz", {"README": b"hi"})
    with pytest.raises(BlitzerFormatError, match="no <domain>/positive.review"):
        list(iter_blitzer(empty))
