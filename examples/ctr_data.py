"""Loading of the Criteo and Avazu samples in ../shared/data for the examples.

Categorical values get ids per field from the training split (values seen at
least `min_count` times; the rest, and values unseen in training, share id 0).
Criteo's integer features become log(1 + x), missing ones 0.
"""

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("GROUP_LASSO_TF_DATA", os.path.join(ROOT, "..", "shared", "data"))


@dataclass
class Split:
    categorical: np.ndarray  # int32 [n, fields], ids per field
    dense: np.ndarray  # float32 [n, dense_fields]
    label: np.ndarray  # float32 [n]


@dataclass
class CtrData:
    train: Split
    dev: Split
    test: Split
    vocab_sizes: list  # rows of each field's embedding table (id 0 = rare/unknown)
    field_names: list


def _vocabularies(rows, min_count):
    counts = [dict() for _ in rows[0]]
    for row in rows:
        for field, value in enumerate(row):
            counts[field][value] = counts[field].get(value, 0) + 1
    vocabs = []
    for field_counts in counts:
        kept = sorted(v for v, c in field_counts.items() if c >= min_count)
        vocabs.append({v: i + 1 for i, v in enumerate(kept)})
    return vocabs


def _encode(rows, vocabs):
    out = np.zeros((len(rows), len(vocabs)), np.int32)
    for i, row in enumerate(rows):
        for field, value in enumerate(row):
            out[i, field] = vocabs[field].get(value, 0)
    return out


def _read(path, delimiter, skip_header=False):
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        if skip_header:
            next(reader)
        return [row for row in reader if row]


def load_criteo(min_count=2, data_dir=None):
    """The criteo_8k sample: 26 categorical fields, 13 dense fields."""
    base = os.path.join(data_dir or DATA_DIR, "criteo_8k")
    splits = {name: _read(os.path.join(base, f"criteo_{name}.csv"), "\t")
              for name in ("train", "dev", "test")}
    vocabs = _vocabularies([r[14:40] for r in splits["train"]], min_count)

    def convert(rows):
        dense = np.array([[math.log1p(max(float(v), 0.0)) if v else 0.0 for v in r[1:14]]
                          for r in rows], np.float32)
        return Split(_encode([r[14:40] for r in rows], vocabs), dense,
                     np.array([float(r[0]) for r in rows], np.float32))

    return CtrData(*(convert(splits[n]) for n in ("train", "dev", "test")),
                   vocab_sizes=[len(v) + 1 for v in vocabs],
                   field_names=[f"C{i}" for i in range(1, 27)])


def load_criteo_raw(data_dir=None):
    """The criteo_8k sample with no vocabulary pass: each split's categorical
    fields as strings "C<field>:<value>" (a [rows, 26] object array), for
    tables over hashed ids (`group_lasso_tf.layers.fingerprint`)."""
    base = os.path.join(data_dir or DATA_DIR, "criteo_8k")
    splits = {name: _read(os.path.join(base, f"criteo_{name}.csv"), "\t")
              for name in ("train", "dev", "test")}

    def convert(rows):
        dense = np.array([[math.log1p(max(float(v), 0.0)) if v else 0.0 for v in r[1:14]]
                          for r in rows], np.float32)
        strings = np.array([[f"C{i + 1}:{v}" for i, v in enumerate(r[14:40])] for r in rows],
                           dtype=object)
        return Split(strings, dense, np.array([float(r[0]) for r in rows], np.float32))

    return CtrData(*(convert(splits[n]) for n in ("train", "dev", "test")),
                   vocab_sizes=None, field_names=[f"C{i}" for i in range(1, 27)])


def load_avazu(min_count=2, data_dir=None):
    """The avazu_9k sample: 22 categorical fields (hour as hour of day), no dense ones."""
    base = os.path.join(data_dir or DATA_DIR, "avazu_9k")
    train = _read(os.path.join(base, "avazu_train.csv"), ",", skip_header=True)
    dev = _read(os.path.join(base, "avazu_dev.csv"), ",")
    test = _read(os.path.join(base, "avazu_test.csv"), ",")

    def fields(r):
        return [r[2][-2:]] + r[3:]  # hour of day, then C1 ... C21

    vocabs = _vocabularies([fields(r) for r in train], min_count)

    def convert(rows):
        return Split(_encode([fields(r) for r in rows], vocabs), np.zeros((len(rows), 0), np.float32),
                     np.array([float(r[1]) for r in rows], np.float32))

    names = ["hour"] + ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                        "app_domain", "app_category", "device_id", "device_ip", "device_model",
                        "device_type", "device_conn_type"] + [f"C{i}" for i in range(14, 22)]
    return CtrData(convert(train), convert(dev), convert(test),
                   vocab_sizes=[len(v) + 1 for v in vocabs], field_names=names)
