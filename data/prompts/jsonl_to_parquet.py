#!/usr/bin/env python3
"""Convert the shipped prompt sets from JSONL (the source of truth) to Parquet.

Usage (from the repository root or anywhere):

    pip install pyarrow
    python3 data/prompts/jsonl_to_parquet.py            # converts every *.jsonl next to this script
    python3 data/prompts/jsonl_to_parquet.py a.jsonl    # converts only the given files

Each ``NAME.jsonl`` is written to ``NAME.parquet`` in the same directory.

Schema (Arrow ``string`` = Parquet UTF8, never ``large_string``):

* ``prompt_id``  string, non-null
* ``prompt``     string, non-null
* ``reference``  string, nullable; only present when the JSONL rows carry a
  ``reference`` key (the evaluation set, ``eval.jsonl``)
* ``constraints`` list<struct<kind string, argument fields...>>, nullable; only
  present when the JSONL rows carry a ``constraints`` key (the
  ``instructions-*.jsonl`` sets). The struct has one field per argument name
  used in the file (``kind`` first, the others sorted): int64 for integers,
  string for strings, list<string> for lists; a constraint leaves the
  arguments of other kinds null.

Rows keep the order of the JSONL file. No pandas is involved, so no index
column is written. Compression is snappy, in a single row group. The output is
deterministic for a given pyarrow version: the same JSONL gives the same
Parquet bytes.

This script is a developer tool only; the Rust project reads the Parquet files
and does not depend on pyarrow.
"""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list:
    rows = []
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{lineno}: invalid JSON: {e}")
    return rows


def argument_type(values: list, path: Path, name: str) -> pa.DataType:
    kinds = {type(v) for v in values}
    if kinds == {int}:
        return pa.int64()
    if kinds == {str}:
        return pa.string()
    if kinds == {list} and all(isinstance(x, str) for v in values for x in v):
        return pa.list_(pa.string())
    sys.exit(f"{path}: constraint argument '{name}' has values of types {sorted(k.__name__ for k in kinds)}, "
             "expected all integers, all strings or all lists of strings")


def constraints_type(rows: list, path: Path) -> pa.DataType:
    values = {}
    for i, r in enumerate(rows, 1):
        cs = r.get("constraints")
        if not isinstance(cs, list) or not cs or not all(isinstance(c, dict) and "kind" in c for c in cs):
            sys.exit(f"{path}: row {i}: 'constraints' must be a non-empty list of objects with a 'kind'")
        for c in cs:
            for k, v in c.items():
                values.setdefault(k, []).append(v)
    names = ["kind"] + sorted(k for k in values if k != "kind")
    return pa.struct([pa.field(n, argument_type(values[n], path, n)) for n in names])


def to_table(rows: list, path: Path) -> pa.Table:
    has_reference = any("reference" in r for r in rows)
    has_constraints = any("constraints" in r for r in rows)
    fields = [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
    ]
    if has_reference:
        fields.append(pa.field("reference", pa.string(), nullable=True))
    if has_constraints:
        fields.append(pa.field("constraints", pa.list_(constraints_type(rows, path)), nullable=True))
    schema = pa.schema(fields)

    seen = set()
    for i, r in enumerate(rows, 1):
        for key in ("prompt_id", "prompt"):
            if not isinstance(r.get(key), str) or not r[key]:
                sys.exit(f"{path}: row {i}: '{key}' must be a non-empty string")
        if r["prompt_id"] in seen:
            sys.exit(f"{path}: row {i}: duplicate prompt_id {r['prompt_id']!r}")
        seen.add(r["prompt_id"])

    columns = {f.name: [r.get(f.name) for r in rows] for f in fields}
    return pa.Table.from_pydict(columns, schema=schema)


def convert(path: Path) -> Path:
    rows = read_jsonl(path)
    table = to_table(rows, path)
    out = path.with_suffix(".parquet")
    pq.write_table(
        table,
        out,
        compression="snappy",
        row_group_size=max(1, len(rows)),
        # Embed the Arrow schema (ARROW:schema) so readers keep Utf8 columns.
        store_schema=True,
        write_statistics=True,
    )
    print(f"{path.name} -> {out.name}: {table.num_rows} rows, columns {table.column_names}")
    return out


def main(argv: list) -> None:
    paths = [Path(a) for a in argv] if argv else sorted(HERE.glob("*.jsonl"))
    if not paths:
        sys.exit(f"no .jsonl files found in {HERE}")
    for p in paths:
        convert(p)


if __name__ == "__main__":
    main(sys.argv[1:])
