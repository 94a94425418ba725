"""Equinox's counter samples (``counters.parquet``): every client whose counters changed, every
``log_interval_s``, as typed columns (a long replay takes millions of samples)."""

from __future__ import annotations

from array import array

import numpy as np
import pyarrow as pa

from traces.result_schemas import COUNTER_SCHEMA


class Trajectory:
    def __init__(self, names: list[str]) -> None:
        self.names = names  # client index -> name
        self.time_s, self.ufc, self.rfc, self.hf = array("d"), array("d"), array("d"), array("d")
        self.client = array("q")

    def __len__(self) -> int:
        return len(self.time_s)

    def append(self, now: float, clients: np.ndarray, ufc: np.ndarray, rfc: np.ndarray, hf: np.ndarray) -> None:
        self.time_s.extend([now] * len(clients))
        self.client.frombytes(clients.astype(np.int64).tobytes())
        for column, values in ((self.ufc, ufc), (self.rfc, rfc), (self.hf, hf)):
            column.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())

    def table(self) -> pa.Table:
        hf = np.frombuffer(self.hf, dtype=np.float64)
        names = pa.array(self.names, type=pa.string())
        clients = pa.DictionaryArray.from_arrays(pa.array(np.frombuffer(self.client, dtype=np.int64)), names)
        return pa.table(
            {
                "time_s": np.frombuffer(self.time_s, dtype=np.float64),
                "client_id": clients.cast(pa.string()),
                "ufc": np.frombuffer(self.ufc, dtype=np.float64),
                "rfc": np.frombuffer(self.rfc, dtype=np.float64),
                "hf": pa.array(hf, mask=np.isnan(hf)),  # null: not backlogged
            },
            schema=COUNTER_SCHEMA,
        )
