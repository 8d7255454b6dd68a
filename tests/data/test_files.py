"""``load_arrays``: a model's named arrays from ``.npz``, ``.json`` and ``.csv`` files, with
integer-valued arrays kept integer (group indices, counts, sizes), and every unreadable file
a one-line ValueError naming the file and the array."""

import json

import numpy as np
import pytest
import torch

from pyro_dgm.data.arrays import to_tensors
from pyro_dgm.data.files import load_arrays


def test_npz_keeps_names_and_dtypes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([0.5, 1.5]), g=np.array([0, 2], dtype=np.int32), N=np.int64(2))
    arrays = load_arrays(path)
    assert list(arrays) == ["x", "g", "N"]
    assert arrays["x"].dtype == np.float64 and arrays["g"].dtype.kind == "i"
    np.testing.assert_array_equal(arrays["g"], [0, 2])
    assert arrays["N"].shape == () and int(arrays["N"]) == 2


def test_json_integers_and_reals_as_written(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"N": 3, "g": [0, 1, 1], "x": [0.5, 1.0, 2.0],
                                "M": [[1, 2], [3, 4]], "s": 2.0}))
    arrays = load_arrays(path)
    assert {k: a.dtype.kind for k, a in arrays.items()} == {"N": "i", "g": "i", "x": "f",
                                                            "M": "i", "s": "f"}
    assert arrays["M"].shape == (2, 2)
    data = to_tensors(arrays, dtype=torch.float32)
    assert data["N"] == 3 and isinstance(data["N"], int)
    assert data["g"].dtype == torch.long and data["x"].dtype == torch.float32
    assert data["s"].dtype == torch.float32 and data["s"].shape == ()


def test_csv_one_array_per_column_integer_columns_stay_integer(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("g, x ,count,half\n0,0.5,3,1.0\n2,-1e-3,-4,2.5\n1, 7 ,0,3\n")
    arrays = load_arrays(path)
    assert list(arrays) == ["g", "x", "count", "half"]
    assert arrays["g"].dtype == np.int64 and arrays["count"].dtype == np.int64
    # one value with a decimal point or exponent makes the column real
    assert arrays["x"].dtype == np.float64 and arrays["half"].dtype == np.float64
    np.testing.assert_array_equal(arrays["x"], [0.5, -1e-3, 7.0])
    np.testing.assert_array_equal(arrays["count"], [3, -4, 0])
    assert to_tensors(arrays)["g"].dtype == torch.long


@pytest.mark.parametrize("name, content, fragment", [
    ("d.txt", "1 2 3", "unreadable file type '.txt'"),
    ("d", "1", "unreadable file type '(no suffix)'"),
    ("d.csv", "g,name\n1,alice\n2,bob\n", "column 'name' is not numeric (value 'alice')"),
    ("d.csv", "a,b\n1,2\n3\n", "line 3 has 1 values for 2 columns"),
    ("d.csv", "a,a\n1,2\n", "name every column once"),
    ("d.csv", "a,b\n", "no rows below the header"),
    ("d.csv", "", "empty"),
    ("d.json", '{"x": [1, "two"]}', "array 'x' is not numeric"),
    ("d.json", '{"x": [[1, 2], [3]]}', "array 'x' is not a rectangular list"),
    ("d.json", '{"x": {"a": 1}}', "array 'x' is not numeric"),
    ("d.json", '{"x": null}', "array 'x' is not numeric"),
    ("d.json", "[1, 2]", "one JSON object"),
    ("d.json", "{x: 1", "cannot read it as .json"),
    ("d.json", "{}", "holds no arrays"),
    ("d.npz", "not a zip file", "cannot read it as .npz"),
])
def test_bad_files_name_the_file_and_array(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_arrays(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message
    assert len(message.splitlines()) == 1


def test_npz_with_strings_or_objects_is_not_numeric(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x=np.zeros(2), label=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="array 'label' is not numeric"):
        load_arrays(path)
    path = tmp_path / "o.npz"
    np.savez(path, x=np.array([1, [2, 3]], dtype=object))
    with pytest.raises(ValueError, match="not numeric"):
        load_arrays(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.npz: no such file"):
        load_arrays(tmp_path / "nope.npz")
