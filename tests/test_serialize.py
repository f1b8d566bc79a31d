"""expkit.serialize: run data as plain JSON data."""

from __future__ import annotations

import datetime
import enum
import json

import numpy as np

from expkit.serialize import to_data


class Colour(enum.IntEnum):
    RED = 1


def test_subclasses_of_plain_types_become_the_plain_type() -> None:
    data = to_data({"acc": np.float64(0.97), "name": np.str_("svm"), "colour": Colour.RED})
    assert data == {"acc": 0.97, "name": "svm", "colour": 1}
    assert [type(v) for v in data.values()] == [float, str, int]
    assert repr(data) == "{'acc': 0.97, 'name': 'svm', 'colour': 1}"  # as a terminal shows it


def test_numpy_arrays_times_and_the_rest() -> None:
    t = datetime.datetime(2024, 5, 1, 12, 0)
    data = to_data([np.arange(3), (np.int64(2), np.bool_(True)), t, None, object])
    assert data[:4] == [[0, 1, 2], [2, True], "2024-05-01T12:00:00.000000", None]
    assert data[4] == repr(object)
    json.dumps(data)
