"""What full batch validation costs the SPU per record, next to the CRC-only check.

Run: .venv/bin/python bench/validate_cost.py [--records-per-batch 160] [--runs 5]

Times ``batch.verify`` (header + CRC, the old produce check) and ``batch.validate``
(records decoded too) on the producer's typical batch: 100-byte values, one key,
plain and zlib. Reports medians in records/s and the share of one core that
validating costs at a given produce rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from edge.protocol import batch as codec


def rate(fn: object, data: bytes, records: int, seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn(data)  # type: ignore[operator]
        n += 50
    return n * records / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records-per-batch", type=int, default=160)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--produce-rate", type=float, default=599_269,
                    help="single-node produce rate to relate the cost to (records/s)")
    args = ap.parse_args()
    rows = [[0, b"probe-1", os.urandom(100)] for _ in range(args.records_per_batch)]
    print(f"machine: {os.cpu_count()} cores; {args.records_per_batch} records of 100 B a batch")
    for compression in codec.Compression:
        data = codec.encode_batch(rows, first_timestamp=1_700_000_000_000,
                                  compression=compression)
        verify = statistics.median(rate(codec.verify, data, len(rows)) for _ in range(args.runs))
        full = statistics.median(rate(codec.validate, data, len(rows)) for _ in range(args.runs))
        share = args.produce_rate / full
        print(f"{compression.name.lower():5} verify {verify:>12,.0f} rec/s  "
              f"validate {full:>10,.0f} rec/s  "
              f"cost at {args.produce_rate:,.0f} rec/s: {share:.1%} of one core")


if __name__ == "__main__":
    main()
