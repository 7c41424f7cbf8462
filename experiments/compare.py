"""Compare a committed result file with the same file re-derived: the first difference.

JSON files are compared as values: the same keys, lists of the same length, the same
strings, integers, booleans and nulls, and floats within ``FLOAT_RTOL`` (re-derived floats
may round differently in the last bits across NumPy versions). CSV files are compared as
text, cell by cell. Either way the answer names the first field that differs, or is None.
"""
import csv
import json
import math
import os

# Relative tolerance of re-derived floats in JSON files (float64 sums in another order).
FLOAT_RTOL = 1e-9


def first_difference(committed, derived):
    """The first difference between two result files (same name, any folders), as
    ``'field: committed X, re-derived Y'``; None when they agree."""
    if not os.path.exists(committed):
        return "missing from the folder"
    if committed.endswith(".json"):
        with open(committed, encoding="utf-8") as f:
            a = json.load(f)
        with open(derived, encoding="utf-8") as f:
            b = json.load(f)
        return json_difference(a, b)
    return csv_difference(committed, derived)


def json_difference(a, b, where="$"):
    """The first place where JSON values ``a`` and ``b`` differ (``$.rows[1].gain: ...``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                return f"{where}.{key}: only in the committed file"
            if key not in a:
                return f"{where}.{key}: only in the re-derived file"
            found = json_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} entries committed, {len(b)} re-derived"
        for i, (x, y) in enumerate(zip(a, b)):
            found = json_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if _is_float(a) or _is_float(b):
        if _numbers_close(a, b):
            return None
    elif type(a) is type(b) and a == b:
        return None
    return f"{where}: committed {_short(a)}, re-derived {_short(b)}"


def csv_difference(committed, derived):
    """The first differing cell of two CSV files (``row 12, column gain: ...``)."""
    with open(committed, newline="", encoding="utf-8") as f:
        a = list(csv.reader(f))
    with open(derived, newline="", encoding="utf-8") as f:
        b = list(csv.reader(f))
    if not a or not b or a[0] != b[0]:
        return f"header: committed {a[0] if a else []}, re-derived {b[0] if b else []}"
    for i, (x, y) in enumerate(zip(a[1:], b[1:]), 1):
        for column, u, v in zip(a[0], x, y):
            if u != v:
                return f"row {i}, column {column}: committed {u!r}, re-derived {v!r}"
        if len(x) != len(y):
            return f"row {i}: {len(x)} cells committed, {len(y)} re-derived"
    if len(a) != len(b):
        return f"{len(a) - 1} rows committed, {len(b) - 1} re-derived"
    return None


def _is_float(value):
    return isinstance(value, float)


def _numbers_close(a, b):
    if isinstance(a, bool) or isinstance(b, bool) or not all(
            isinstance(v, (int, float)) for v in (a, b)):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=1e-12)


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
