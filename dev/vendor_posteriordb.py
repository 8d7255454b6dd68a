"""Build the posteriordb bundle that :mod:`pyro_dgm.data.posteriordb` reads.

Reads eight posteriors from a posteriordb checkout (a working tree, or a bare git repository
read at ``HEAD``) and writes, into ``--out``:

- ``<posterior>.npz`` (compressed): ``data.<name>`` for every variable of the Stan model's
  ``data`` block, typed by its Stan declaration (``int`` -> int64, everything else ->
  float64; never by how JSON printed a number), and ``reference.<param>`` for every variable
  of the ``parameters`` block: the reference draws, thinned evenly from 10 chains x 1,000 to
  10 chains x 100 (every 10th draw), placed by Stan's 1-based index into arrays of shape
  ``(chains, draws, *declared_shape)``. Transformed parameters and generated quantities are
  dropped.
- ``README.md`` (credit) and ``LICENSE-posteriordb.md`` (posteriordb's licence);
- ``manifest.json``: per posterior, the data and parameter declarations (name, Stan type,
  dimension expressions), whether reference draws are stored, and the provenance.
- with ``--with-stan-source``: ``stan/<model>.stan``, the Stan programs.

Usage::

    python dev/vendor_posteriordb.py /path/to/posteriordb --out /path/to/bundle

The files it writes are posteriordb's (BSD-3, Stan Developers); see docs/posteriordb.md for
where they may be kept.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from pyro_dgm.data.posteriordb import parse_stan_index, posteriordb_names

POSTERIORS = tuple(posteriordb_names())
THIN = 10  # 1,000 draws per chain -> 100
_DB = "posterior_database"


class Source:
    """posteriordb files from a working tree or (``git show``) from a bare repository."""

    def __init__(self, path: Path):
        self.path = path
        self.bare = not (path / _DB).is_dir()
        self.commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()

    def read(self, relative: str) -> bytes | None:
        if not self.bare:
            file = self.path / relative
            return file.read_bytes() if file.is_file() else None
        out = subprocess.run(["git", "-C", str(self.path), "show", f"HEAD:{relative}"],
                             capture_output=True)
        return out.stdout if out.returncode == 0 else None

    def read_json(self, relative: str):
        raw = self.read(relative)
        if raw is None:
            return None
        if relative.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                raw = z.read(z.namelist()[0])
        return json.loads(raw)


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*|#[^\n]*", " ", code)


def _block(code: str, name: str) -> str:
    """The body of the top-level block ``name`` (not ``transformed <name>``)."""
    match = re.search(rf"(?<!transformed )\b{name}\s*\{{", code)
    if match is None:
        return ""
    depth, start = 1, match.end()
    for i in range(start, len(code)):
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        if depth == 0:
            return code[start:i]
    raise ValueError(f"unbalanced braces in the {name} block")


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets/parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()] if current.strip() else parts


def declarations(code: str, block: str) -> list[dict]:
    """Variables declared in a block: name, Stan type, base (int/real), dimension exprs."""
    out = []
    for statement in _block(_strip_comments(code), block).split(";"):
        statement = " ".join(statement.split())
        constraint = re.search(r"<([^<>]*)>", statement)
        statement = re.sub(r"<[^<>]*>", "", statement)
        if not statement:
            continue
        match = re.fullmatch(r"(?:array\s*\[(?P<adims>[^\]]*)\]\s*)?(?P<type>\w+)"
                             r"\s*(?:\[(?P<tdims>[^\]]*)\])?\s+(?P<name>\w+)", statement)
        if match is None:
            raise ValueError(f"cannot parse the {block} declaration {statement!r}")
        dims = _split_top(match["adims"] or "") + _split_top(match["tdims"] or "")
        if match["type"] in ("cov_matrix", "corr_matrix", "cholesky_factor_corr") and \
                len(_split_top(match["tdims"] or "")) == 1:
            dims.append(dims[-1])  # square matrices declared by one size
        out.append({"name": match["name"], "stan_type": match["type"],
                    "base": "int" if match["type"] == "int" else "real", "dims": dims,
                    "constraint": constraint[1].replace(" ", "") if constraint else ""})
    return out


def _eval_dims(dims: list[str], data: dict) -> tuple[int, ...]:
    shape = []
    for d in dims:
        shape.append(int(d) if d.isdigit() else int(data[d]))
    return tuple(shape)


def typed_data(raw: dict, decls: list[dict], posterior: str) -> dict[str, np.ndarray]:
    out = {}
    for decl in decls:
        name = decl["name"]
        if name not in raw:
            raise ValueError(f"{posterior}: data {name!r} of the Stan data block is missing")
        value = np.asarray(raw[name], dtype=np.float64)
        if decl["base"] == "int":
            if not np.all(value == np.round(value)):
                raise ValueError(f"{posterior}: Stan int data {name!r} has non-integers")
            value = value.astype(np.int64)
        shape = _eval_dims(decl["dims"], raw)
        if value.shape != shape:
            raise ValueError(f"{posterior}: data {name!r} has shape {value.shape}, "
                             f"declared {shape}")
        out[name] = value
    return out


def grouped_reference(chains: list[dict], params: list[dict], data: dict) -> dict:
    """Thinned draws per parameter, shape (chains, draws, *shape), placed by index."""
    out = {}
    for decl in params:
        shape = _eval_dims(decl["dims"], data)
        keys = [k for k in chains[0] if parse_stan_index(k)[0] == decl["name"]]
        if len(keys) != int(np.prod(shape)):
            raise ValueError(f"{decl['name']}: {len(keys)} draw columns for shape {shape}")
        n = len(chains[0][keys[0]][::THIN])
        array = np.full((len(chains), n, *shape), np.nan)
        for c, chain in enumerate(chains):
            for key in keys:
                array[(c, slice(None), *parse_stan_index(key)[1])] = chain[key][::THIN]
        if np.isnan(array).any():
            raise ValueError(f"{decl['name']}: draws missing after placing by index")
        out[decl["name"]] = array
    return out


def vendor(source: Source, out: Path, with_stan: bool) -> dict:
    manifest = {"source": "stan-dev/posteriordb", "commit": source.commit,
                "licence": "BSD-3-Clause, Copyright (c) 2011-2024, Stan Developers and "
                           "their Assignees", "thinning": f"every {THIN}th draw",
                "posteriors": {}}
    out.mkdir(parents=True, exist_ok=True)
    for posterior in POSTERIORS:
        info = source.read_json(f"{_DB}/posteriors/{posterior}.json")
        model = info["model_name"]
        code = source.read(f"{_DB}/models/stan/{model}.stan").decode()
        data_decls, param_decls = declarations(code, "data"), declarations(code, "parameters")
        raw = source.read_json(f"{_DB}/data/data/{info['data_name']}.json.zip")
        data = typed_data(raw, data_decls, posterior)
        draws = source.read_json(
            f"{_DB}/reference_posteriors/draws/draws/{posterior}.json.zip")
        arrays = {f"data.{k}": v for k, v in data.items()}
        if draws is not None:
            reference = grouped_reference(draws, param_decls, data)
            arrays.update({f"reference.{k}": v for k, v in reference.items()})
        else:
            print(f"{posterior}: no reference draws in this checkout", file=sys.stderr)
        np.savez_compressed(out / f"{posterior}.npz", **arrays)
        if with_stan:
            (out / "stan").mkdir(exist_ok=True)
            (out / "stan" / f"{model}.stan").write_text(code)
        manifest["posteriors"][posterior] = {
            "model": model, "data_name": info["data_name"], "data": data_decls,
            "parameters": param_decls, "has_reference": draws is not None,
            "reference_shape": ([len(draws), len(draws[0][next(iter(draws[0]))][::THIN])]
                                if draws is not None else None)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(
        f"# posteriordb bundle\n\nEight posteriors of posteriordb (stan-dev/posteriordb, "
        f"commit {source.commit[:7]}; Magnusson, Bürkner & Vehtari), BSD-3-Clause, "
        f"Copyright (c) 2011-2024 Stan Developers and their Assignees: see "
        f"LICENSE-posteriordb.md.\n\nTaken: each posterior's data (typed by the Stan data "
        f"block) and its reference draws (parameters block only), thinned evenly from 10 "
        f"chains x 1,000 to 10 x 100 (every {THIN}th draw). Built by pyro_dgm's "
        f"dev/vendor_posteriordb.py; read by pyro_dgm.data.posteriordb.\n")
    licence = source.read("LICENCE.md")
    if licence is not None:
        (out / "LICENSE-posteriordb.md").write_bytes(licence)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("posteriordb", type=Path, help="posteriordb checkout or bare repo")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory")
    parser.add_argument("--with-stan-source", action="store_true",
                        help="also copy the Stan programs to OUT/stan/")
    args = parser.parse_args(argv)
    manifest = vendor(Source(args.posteriordb), args.out, args.with_stan_source)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(args.out), "commit": manifest["commit"],
                      "posteriors": len(manifest["posteriors"]), "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
