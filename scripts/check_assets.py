"""Check that data files exist and match the checksums in project.yml.

    python scripts/check_assets.py PATH [PATH ...] [--project-dir DIR]

Each PATH is matched against the ``dest`` of an asset in project.yml, where
``${vars.NAME}`` stands for any folder, so a file found through an override
such as ``--vars.ptb_dir ../shared/data/ptb`` is still checked against the
public file's MD5. A missing or corrupt file gets a message that names the
asset and says what to do; the exit code is 1 if any check failed.

`spacy project assets` only warns about a checksum mismatch and carries on,
which is why the workflows run this before converting anything.
"""
import argparse
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import srsly

VAR_RE = re.compile(r"\$\{vars\.([A-Za-z0-9_]+)\}")


@dataclass
class Asset:
    dest: str
    url: Optional[str]
    checksum: Optional[str]
    description: str
    default_dest: str = ""
    # project.yml commands that write this file (e.g. an unpack step), each
    # with the downloadable assets it reads: how to make a file that has no
    # URL of its own.
    made_by: List[Tuple[str, List[str]]] = field(default_factory=list)

    @property
    def var_names(self) -> List[str]:
        return VAR_RE.findall(self.dest)

    @property
    def label(self) -> str:
        """Short name for messages: file name and the description's first clause."""
        name = Path(self.default_dest or self.dest).name
        summary = self.description.split(" (")[0].split(". ")[0]
        return f"'{name}' ({summary})" if summary else f"'{name}'"

    def matches(self, path: str) -> bool:
        """Whether ``path`` is this asset's dest with some value for its vars."""
        # A dest that is one whole variable (a file path) would match any
        # path: ask for the default's file type at least.
        if VAR_RE.fullmatch(self.dest) and Path(path).suffix != Path(self.default_dest).suffix:
            return False
        pattern = "".join(
            "(.+)" if i % 2 else re.escape(part)
            for i, part in enumerate(VAR_RE.split(self.dest))
        )
        return re.fullmatch(pattern, _norm(path)) is not None


def _norm(path: str) -> str:
    return Path(path).as_posix()


def load_assets(project_dir: Path) -> List[Asset]:
    """Read the URL assets from project.yml, variables left uninterpolated.

    project_dir (Path): Folder that holds project.yml.
    RETURNS (List[Asset]): The assets, in file order.
    """
    config_path = project_dir / "project.yml"
    if not config_path.exists():
        raise FileNotFoundError(f"Can't find {config_path}: run this from the project root")
    config = srsly.read_yaml(config_path)
    variables = config.get("vars", {})

    def default(dest: str) -> str:
        return VAR_RE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), dest)

    assets = [
        Asset(
            dest=_norm(item["dest"]),
            url=item.get("url"),
            checksum=item.get("checksum"),
            description=item.get("description", ""),
            default_dest=_norm(default(item["dest"])),
        )
        for item in config.get("assets", [])
        if "dest" in item
    ]
    downloads = {a.default_dest for a in assets if a.url}
    for command in config.get("commands", []):
        outputs = {_norm(default(o)) for o in command.get("outputs", [])}
        fetched = [_norm(default(d)) for d in command.get("deps", [])]
        for asset in assets:
            if asset.default_dest in outputs:
                asset.made_by.append((command["name"], [d for d in fetched if d in downloads]))
    return assets


def md5sum(path: Path, chunk_size: int = 1 << 20) -> str:
    """MD5 of a file's bytes, as `spacy project assets` computes it."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_asset(assets: Sequence[Asset], path: str) -> Optional[Asset]:
    """The asset whose dest ``path`` is, preferring a literal match."""
    for asset in assets:
        if _norm(path) in (asset.dest, asset.default_dest):
            return asset
    for asset in assets:
        if asset.matches(path):
            return asset
    return None


def _how_to_get(asset: Asset) -> str:
    override = ""
    if asset.var_names:
        var = asset.var_names[0]
        override = (
            f"point it at a local copy with --vars.{var} PATH "
            f"(e.g. `spacy project run WORKFLOW . --vars.{var} ../shared/data/...`)"
        )
    if asset.url:
        fetch = "run `spacy project assets` to download it"
        return f"{fetch}, or {override}" if override else fetch
    if asset.made_by:
        ways = []
        for name, downloads in asset.made_by:
            way = f"`spacy project run {name}`"
            if downloads:
                way += f" (after `spacy project assets` has downloaded {', '.join(downloads)})"
            ways.append(way)
        make = "make it with " + " or ".join(ways)
        return f"{make}, or {override}" if override else make
    if override:
        return f"this asset has no download URL: {override}"
    return "this asset has no download URL: put the file there yourself"


def check_asset(assets: Sequence[Asset], path: str) -> Optional[str]:
    """Check one file.

    RETURNS (Optional[str]): An error message, or None if the file is fine.
    """
    asset = find_asset(assets, path)
    file_path = Path(path)
    if asset is None:
        return f"{path}: not an asset of project.yml, so it can't be checked (is the path right?)"
    label = asset.label
    if not file_path.exists():
        return f"Asset {label} is missing: {path} does not exist. To get it, {_how_to_get(asset)}."
    if not file_path.is_file():
        return f"Asset {label} at {path} is not a file."
    if asset.checksum:
        actual = md5sum(file_path)
        if actual != asset.checksum:
            return (
                f"Asset {label} at {path} is corrupt or a different version: its MD5 is "
                f"{actual}, project.yml expects {asset.checksum}. Delete it and fetch it "
                f"again ({_how_to_get(asset)})."
            )
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="Files to check, as passed to the workflow")
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="Folder with project.yml")
    args = parser.parse_args(argv)
    try:
        assets = load_assets(args.project_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"✘ {err}", file=sys.stderr)
        return 1
    failed = 0
    for path in args.paths:
        error = check_asset(assets, path)
        if error is None:
            print(f"✔ {path}")
        else:
            print(f"✘ {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
