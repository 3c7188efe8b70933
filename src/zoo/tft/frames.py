"""Parquet frames of the TFT cache: the prepared frame written and read a slice / row group at a time, so a
fleet's table is never held twice (once as pandas, once as Arrow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def read_frame(path: Path, skip: Any = ()) -> pd.DataFrame:
    """The cached frame without the `skip` columns, one row group at a time into preallocated columns:
    reading the whole table first held it twice (decompression buffers, then Arrow's copy) on a fleet.
    String columns become object arrays sharing one Python string per distinct value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    n = file.metadata.num_rows
    skip = set(skip)
    keep = [f.name for f in schema if f.name not in skip]
    text = [
        c
        for c in keep
        if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)
    ]
    plain = [c for c in keep if c not in text]

    def whole() -> pd.DataFrame:  # other types (bool, nested, nullable ints...): Arrow's own conversion
        table = pq.read_table(path, columns=keep)
        frame = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
        pa.default_memory_pool().release_unused()
        return frame

    if any(not (pa.types.is_floating(schema.field(c).type) or pa.types.is_integer(schema.field(c).type)
                or pa.types.is_timestamp(schema.field(c).type)) for c in plain) or file.metadata.num_row_groups == 0:  # fmt: skip
        return whole()
    empty = schema.empty_table().to_pandas()
    if not all(isinstance(empty[c].dtype, np.dtype) for c in plain):
        return whole()
    cols: dict[str, np.ndarray] = {c: np.empty(n, dtype=empty[c].dtype) for c in plain}
    cols.update({c: np.empty(n, dtype=object) for c in text})
    interned: dict[str, str] = {}
    start = 0
    for g in range(file.num_row_groups):
        part = file.read_row_group(g, columns=keep)
        stop = start + part.num_rows
        for c in plain:
            column = part.column(c)
            if column.null_count and not pa.types.is_floating(column.type):
                del cols, part
                return whole()
            cols[c][start:stop] = column.to_pandas().to_numpy()
        for c in text:
            enc = part.column(c).combine_chunks().dictionary_encode()
            names = [interned.setdefault(v, v) for v in enc.dictionary.to_pylist()]
            lut = np.array([*names, None], dtype=object)
            cols[c][start:stop] = lut[enc.indices.fill_null(len(names)).to_numpy()]
        del part
        start = stop
    pa.default_memory_pool().release_unused()
    return pd.DataFrame({c: cols[c] for c in keep}, copy=False)


def write_frame(frame: pd.DataFrame, path: Path, rows: int = 500_000) -> None:
    """``frame.to_parquet(path, index=False)`` a slice of rows at a time: converting the whole frame to
    Arrow first held a second copy of the fleet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(frame.iloc[:rows], preserve_index=False)
    # Dictionary pages pay off for the id columns only (trying them on every float column was most of
    # the write time).
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    with pq.ParquetWriter(path, schema, use_dictionary=text or False) as writer:
        for start in range(0, max(len(frame), 1), rows):
            part = pa.Table.from_pandas(frame.iloc[start : start + rows], schema=schema, preserve_index=False)
            writer.write_table(part)
            del part
    pa.default_memory_pool().release_unused()
