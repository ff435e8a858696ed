"""Bad input to the project workflows: missing or corrupt assets, malformed
records, and conversions that fail halfway."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spacy_rnn.corpus import amazon
from spacy_rnn.corpus.amazon import convert_amazon

from .util import FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import check_assets  # noqa: E402
import hf_to_text  # noqa: E402

REVIEWS = FIXTURES / "reviews_tiny.jsonl"


@pytest.fixture
def project(tmp_path):
    """A project folder whose project.yml lists the fixture as an asset."""
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    return tmp_path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): _md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_asset_names_asset_and_remedy(project, capsys):
    missing = "assets/ptb/ptb.test.txt"
    assert check_assets.main([missing, "--project-dir", str(project)]) == 1
    err = capsys.readouterr().err
    assert "'ptb.test.txt'" in err and "Penn Treebank" in err and "does not exist" in err
    assert "spacy project assets" in err and "--vars.ptb_dir" in err


def test_missing_asset_without_url_says_to_point_a_var_at_it(project, tmp_path, capsys):
    assert check_assets.main([str(tmp_path / "nowhere" / "reviews.jsonl"), "--project-dir", str(project)]) == 1
    err = capsys.readouterr().err
    assert "no download URL" in err and "--vars.amazon_jsonl" in err


def test_missing_unpacked_asset_names_the_commands_that_make_it(project, capsys):
    # The WikiText-2 token files have no URL: the zip has, and a command unpacks it.
    assert check_assets.main(["assets/wikitext-2/wiki.valid.tokens", "--project-dir", str(project)]) == 1
    err = capsys.readouterr().err
    assert "spacy project run extract-wikitext2" in err and "assets/wikitext-2-v1.zip" in err
    assert "spacy project run hf-wikitext2" in err and "--vars.wikitext2_dir" in err


def test_corrupt_asset_is_reported_with_both_checksums(project, tmp_path, capsys):
    bad = tmp_path / "ptb" / "ptb.valid.txt"
    bad.parent.mkdir()
    bad.write_text(" a truncated download \n")
    assert check_assets.main([str(bad), "--project-dir", str(project)]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and _md5(bad) in err and "aa0affc06ff7c36e977d7cd49e3839bf" in err
    assert str(bad) in err


def test_unknown_path_is_not_silently_accepted(project, capsys):
    assert check_assets.main(["assets/whatever.bin", "--project-dir", str(project)]) == 1
    assert "not an asset of project.yml" in capsys.readouterr().err


def test_check_assets_as_a_workflow_step_fails_the_workflow(project):
    (project / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "check_assets.py", project / "scripts")
    proc = subprocess.run(
        [sys.executable, "-m", "weasel", "run", "check-amazon", str(project), "--vars.amazon_jsonl", "missing/reviews.jsonl"],
        capture_output=True, text=True, cwd=project,
    )
    assert proc.returncode != 0
    assert "'reviews.jsonl'" in proc.stderr and "is missing" in proc.stderr


def test_shared_data_matches_asset_checksums(shared_data, capsys):
    paths = [
        shared_data / "ptb" / f"ptb.{s}.txt" for s in ("train", "valid", "test")
    ] + [
        shared_data / "wikitext-2" / f"wiki.{s}.tokens" for s in ("train", "valid", "test")
    ] + [shared_data / "amazon-mds" / "reviews.jsonl"]
    present = [str(p) for p in paths if p.exists()]
    if not present:
        pytest.skip("no shared data files")
    assert check_assets.main(present + ["--project-dir", str(ROOT)]) == 0, capsys.readouterr().err


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines = REVIEWS.read_text().splitlines()
    lines[6] = '{"label": "positive", "text": "unterminated'
    bad = tmp_path / "reviews.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-amazon", str(bad), str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    # wasabi wraps messages at the terminal width, so a long tmp path can
    # put a line break anywhere in the message.
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "reviews.jsonl" in out and "line 7" in out
    assert not (tmp_path / "out" / "train.spacy").exists()


def test_bad_label_names_record(tmp_path):
    rows = [json.loads(line) for line in REVIEWS.read_text().splitlines()]
    rows[30]["label"] = "neutral"
    bad = tmp_path / "reviews.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"record 31 has label 'neutral'"):
        convert_amazon(str(bad), tmp_path / "out")
    # Failing after 30 good records still writes nothing.
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_interrupted_conversion_keeps_previous_corpus(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    counts = convert_amazon(str(REVIEWS), out, shard_size=4)
    assert sum(counts.values()) == 40
    before = _snapshot(out)

    calls = {"n": 0}
    real_split_of = amazon.split_of

    def split_then_interrupt(key):
        calls["n"] += 1
        if calls["n"] == 25:  # several shards are on disk by now
            raise KeyboardInterrupt
        return real_split_of(key)

    monkeypatch.setattr(amazon, "split_of", split_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_amazon(str(REVIEWS), out, shard_size=4)
    # The old corpus is intact and no partial shard folder is left behind.
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["dev.spacy", "test.spacy", "train.spacy"]


def test_interrupted_first_conversion_leaves_no_spacy_files(tmp_path, monkeypatch):
    def interrupt(key):
        if interrupt.n == 10:
            raise RuntimeError("disk full")
        interrupt.n += 1
        return "train"

    interrupt.n = 0
    monkeypatch.setattr(amazon, "split_of", interrupt)
    out = tmp_path / "corpus"
    with pytest.raises(RuntimeError):
        convert_amazon(str(REVIEWS), out, shard_size=3)
    assert not out.exists() or not any(out.iterdir())


def _parquet(path: Path, field: str, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: list(rows)}), path)
    return path


def test_hf_export_rebuilds_ptb_layout(tmp_path):
    original = (FIXTURES / "stream_tiny.txt").read_text()
    # ptb_text_only rows are the stripped sentences.
    rows = [line.strip() for line in original.splitlines()]
    source = _parquet(tmp_path / "ptb.parquet", "sentence", rows)
    out = tmp_path / "assets" / "ptb.train.txt"
    argv = [str(source), "train", str(out), "--field", "sentence", "--layout", "ptb"]
    assert hf_to_text.main(argv) == 0
    assert out.read_text() == original
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_hf_export_rebuilds_wikitext_layout(shared_data, tmp_path):
    original = (shared_data / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf8")
    # Salesforce/wikitext rows keep each line's newline; empty lines are "".
    rows = [line if line.strip() else "" for line in original.splitlines(keepends=True)]
    source = _parquet(tmp_path / "wiki.parquet", "text", rows)
    out = tmp_path / "wiki.valid.tokens"
    assert hf_to_text.main([str(source), "validation", str(out), "--field", "text", "--layout", "wikitext"]) == 0
    assert _md5(out) == "d756d22ab2310e7e60c094bea5c5a8eb"


def test_hf_export_names_missing_field(tmp_path, capsys):
    source = _parquet(tmp_path / "x.parquet", "sentence", ["a b"])
    assert hf_to_text.main([str(source), "train", str(tmp_path / "o.txt"), "--field", "text"]) == 1
    assert "no field 'text'" in capsys.readouterr().err
    assert not (tmp_path / "o.txt").exists()
