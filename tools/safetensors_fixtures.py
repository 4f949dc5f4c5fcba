#!/usr/bin/python3
"""Writes kiln's safetensors test files into tests/data/safetensors/ and checks kiln's own.

  /usr/bin/python3 tools/safetensors_fixtures.py           # write the fixtures, then check
  /usr/bin/python3 tools/safetensors_fixtures.py --check   # only check the kiln-written files

Needs PyTorch (Debian python3-torch) and Hugging Face's `safetensors` package
(pip install --user --break-system-packages safetensors).

Files written:
  python_written.safetensors   by safetensors.torch.save_file: every dtype torch 1.13 has
  spec_16bit.safetensors       by hand (struct only): BF16 and F16 bit patterns torch cannot
                               make directly (NaN payloads, signalling NaNs, subnormals, -0, Inf)
                               that must load and save back bit for bit
  spec_written.safetensors     by hand from the format description: U16/U32/U64 (torch 1.13 has
                               none), pretty-printed JSON, \\u escapes, header order != data order
  torch_module.safetensors     a torch Sequential(Linear(3, 4), LayerNorm(4)) state dict
  torch_module_io.safetensors  an input x and the module's output y for it
  bad_*.safetensors            malformed files; bad_cases.txt maps each to the text kiln's error
                               must contain. Each is also offered to the reference reader, and the
                               few that it accepts (kiln is stricter there) are listed in
                               bad_cases.txt with a trailing "stricter" column.
Files checked (written by kiln's test suite, test_safetensors.cpp):
  kiln_written.safetensors, kiln_module.safetensors — loaded with safetensors + torch.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "safetensors")


def f32_values():
    return torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.25 - 1.0


F64_VALUES = [1.0 / 3.0, -2.5e-300, 1e300, -0.0, math.inf, -math.inf, 5e-324]
F16_VALUES = [k * 0.375 for k in range(-8, 8)] + [2.0**-14, 2.0**-24, 65504.0, math.inf, -0.0, -(2.0**-20)]
BF16_VALUES = [1.0, -2.5, 3.140625, 2.0**100, -(2.0**-130), 0.0]
I64_VALUES = [-(2**62) - 3, -1, 0, 2**62 + 5, 2**63 - 1, -(2**63)]


def write_python_fixture():
    t = {
        "f32": f32_values(),
        "f64": torch.tensor(F64_VALUES, dtype=torch.float64),
        "f16": torch.tensor(F16_VALUES, dtype=torch.float16),
        "bf16": torch.tensor(BF16_VALUES, dtype=torch.bfloat16),
        "i64": torch.tensor(I64_VALUES, dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 7], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, -2], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    for v, ref in [(t["f16"], F16_VALUES), (t["bf16"], BF16_VALUES)]:
        assert v.double().tolist() == ref or all(
            (a == b) or (math.isinf(a) and math.isinf(b)) for a, b in zip(v.double().tolist(), ref)), "not exact"
    save_file(t, os.path.join(OUT, "python_written.safetensors"),
              metadata={"format": "pt", "note": "kiln fixture \u2713 \"quoted\"\n"})


def raw_file(header_bytes, data=b"", n=None):
    if n is None:
        n = len(header_bytes)
    return struct.pack("<Q", n) + header_bytes + data


def write_spec_fixture():
    u16 = np.array([0, 65535, 300], dtype="<u2").tobytes()
    u32 = np.array([0, 4294967295, 70000], dtype="<u4").tobytes()
    u64 = np.array([0, 2**63 - 1, 12345678901234], dtype="<u8").tobytes()
    f32 = np.array([1.5, -2.0], dtype="<f4").tobytes()
    data = u64 + u32 + f32 + u16  # data order differs from header order below
    o = {}
    pos = 0
    for name, b in [("u64", u64), ("u32", u32), ("caf\u00e9/\u0001 \"q\"", f32), ("u16", u16)]:
        o[name] = (pos, pos + len(b))
        pos += len(b)
    header = {
        "u16": {"shape": [3], "dtype": "U16", "data_offsets": list(o["u16"])},
        "caf\u00e9/\u0001 \"q\"": {"data_offsets": list(o["caf\u00e9/\u0001 \"q\""]), "dtype": "F32", "shape": [2]},
        "__metadata__": {"\u00fcber": "\U0001f600 emoji", "empty": ""},
        "u32": {"dtype": "U32", "shape": [3], "data_offsets": list(o["u32"])},
        "u64": {"dtype": "U64", "shape": [3, 1], "data_offsets": list(o["u64"])},
    }
    text = json.dumps(header, indent=2, ensure_ascii=True).encode()  # \u escapes, incl. a surrogate pair
    text = text + b"\n  \t\n "  # JSON whitespace after the object (the format requires '{' first)
    with open(os.path.join(OUT, "spec_written.safetensors"), "wb") as f:
        f.write(raw_file(text, data))


BF16_BITS = [0x3F80, 0xC020, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x7FC1, 0x7F81]
F16_BITS = [0x3C00, 0x7BFF, 0x0001, 0x8400, 0x7C00, 0xFC00, 0x7E01, 0x7C01]


def write_16bit_fixture():
    """BF16 (2, 4) and F16 (8,) from raw bits, laid out as Python's safetensors writes files
    (compact JSON, metadata first, header padded with spaces to 8 bytes)."""
    bf16 = struct.pack("<8H", *BF16_BITS)
    f16 = struct.pack("<8H", *F16_BITS)
    header = {
        "__metadata__": {"format": "pt"},
        "bf16": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]},
        "f16": {"dtype": "F16", "shape": [8], "data_offsets": [16, 32]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(OUT, "spec_16bit.safetensors"), "wb") as f:
        f.write(raw_file(text, bf16 + f16))


def write_module_fixture():
    torch.manual_seed(7)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    with torch.no_grad():
        m[1].weight.copy_(torch.linspace(0.5, 2.0, 4))
        m[1].bias.copy_(torch.linspace(-0.3, 0.3, 4))
    save_file(dict(m.state_dict()), os.path.join(OUT, "torch_module.safetensors"))
    x = torch.randn(5, 3)
    with torch.no_grad():
        y = m(x)
    save_file({"x": x, "y": y}, os.path.join(OUT, "torch_module_io.safetensors"))


def tensor_header(entries, metadata=None, raw=None):
    """JSON text for [(name, dtype, shape, [b, e])]; `raw` overrides with a literal string."""
    if raw is not None:
        return raw.encode() if isinstance(raw, str) else raw
    h = {}
    if metadata is not None:
        h["__metadata__"] = metadata
    for name, dtype, shape, off in entries:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": off}
    return json.dumps(h, separators=(",", ":")).encode()


def bad_cases():
    """(name, file bytes, text kiln's error must contain)."""
    ok_entry = '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    four = b"\0\0\x80\x3f"

    def one(entry_json, data=four):
        return raw_file(("{" + entry_json + "}").encode(), data)

    def entries(lst, data, **kw):
        return raw_file(tensor_header(lst, **kw), data)

    return [
        ("empty", b"", "the file is empty"),
        ("short_len", b"\x01\x02\x03", "too short for the 8-byte header length"),
        ("header_over_limit", raw_file(b"", b"", n=100_000_001), "exceeds the limit of 100000000 bytes"),
        ("header_len_max_u64", raw_file(b"{}", b"", n=2**64 - 1), "exceeds the limit"),
        ("header_past_eof", raw_file(b"{}", b"", n=1000), "runs past the end of the file"),
        ("header_len_zero", raw_file(b"", b"", n=0), "the header is empty"),
        ("not_object", raw_file(b"[1,2]"), "the header must begin with '{', got byte 0x5b"),
        ("whitespace_only", raw_file(b"  "), "the header must begin with '{', got byte 0x20"),
        ("leading_whitespace", raw_file(b" {}"), "the header must begin with '{', got byte 0x20"),
        ("unclosed_object", raw_file(("{" + ok_entry).encode(), four), "expected ',' or '}'"),
        ("trailing_json", raw_file(b"{} x"), "after the header's JSON object"),
        ("nul_padding", raw_file(b"{}\0\0\0\0\0\0"), "byte 0x00"),
        ("utf8_invalid", raw_file(b'{"a\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
         "invalid UTF-8"),
        ("utf8_overlong", raw_file(b'{"\xc0\xaf":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
         "invalid UTF-8"),
        ("utf8_surrogate", raw_file(b'{"\xed\xa0\x80":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
         "invalid UTF-8"),
        ("lone_surrogate", one('"\\udc00":' + ok_entry[4:]), "lone low surrogate"),
        ("unpaired_high_surrogate", one('"\\ud800x":' + ok_entry[4:]), "not followed by a low surrogate"),
        ("control_char", raw_file(b'{"a\x01":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
         "unescaped control character 0x01"),
        ("bad_escape", one('"\\q":' + ok_entry[4:]), "invalid escape"),
        ("unknown_dtype", one('"a":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}'), "unknown dtype 'F31'"),
        ("dtype_f8", raw_file(b'{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}', four),
         "dtype F8_E4M3, which kiln cannot load"),
        ("dtype_not_string", one('"a":{"dtype":5,"shape":[1],"data_offsets":[0,4]}'), "expected the dtype"),
        ("shape_negative", one('"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}'),
         "expected the shape (a non-negative integer), found '-'"),
        ("shape_float", one('"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}'), "must be an integer"),
        ("shape_exponent", one('"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}'), "must be an integer"),
        ("shape_leading_zero", one('"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}'), "leading zero"),
        ("shape_nan", one('"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}'), "found 'N'"),
        ("shape_not_array", one('"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}'), "expected '['"),
        ("shape_too_many_dims", one('"a":{"dtype":"F32","shape":[' + ",".join(["1"] * 65) + '],"data_offsets":[0,4]}'),
         "more than 64 entries"),
        ("shape_dim_too_big", one('"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}'),
         "larger than 2^63 - 1"),
        ("shape_mismatch", entries([("a", "F32", [2, 3], [0, 20])], b"\0" * 20),
         "needs 24 bytes but data_offsets [0, 20] hold 20"),
        ("shape_bytes_overflow", entries([("a", "F32", [2**32, 2**32, 2**32], [0, 4])], four), "overflows 64 bits"),
        ("shape_zero_dim_overflow", entries([("a", "F32", [0, 2**62, 2**62], [0, 0])], b""), "overflows 64 bits"),
        ("offsets_reversed", entries([("a", "F32", [1], [8, 4])], b"\0" * 8), "begin is after end"),
        ("offsets_past_end", entries([("a", "F32", [100], [0, 400])], four), "past the end of the 4-byte data buffer"),
        ("offsets_overlap", entries([("a", "F64", [1], [0, 8]), ("b", "F64", [1], [4, 12])], b"\0" * 12),
         "overlap tensor 'a' [0, 8]"),
        ("offsets_gap", entries([("a", "F32", [1], [0, 4]), ("b", "F32", [1], [8, 12])], b"\0" * 12),
         "bytes [4, 8) of the data buffer belong to no tensor"),
        ("offsets_aliased", entries([("a", "F32", [1], [0, 4]), ("b", "F32", [1], [0, 4])], four), "overlap"),
        ("trailing_bytes", entries([("a", "F32", [1], [0, 4])], b"\0" * 8), "4 trailing bytes"),
        ("offsets_one_number", one('"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}'), "must be [begin, end]"),
        ("offsets_three_numbers", one('"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}'), "must be [begin, end]"),
        ("offset_above_u64", one('"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}'),
         "does not fit in 64 bits"),
        ("offsets_huge", entries([("a", "U8", [2**64 - 1], [0, 2**64 - 1])], four), "larger than 2^63 - 1"),
        ("duplicate_name", raw_file(('{' + ok_entry + ',' + ok_entry + '}').encode(), four),
         "duplicate tensor name 'a'"),
        ("duplicate_field", one('"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}'),
         "duplicate field 'dtype'"),
        ("missing_field", one('"a":{"dtype":"F32","data_offsets":[0,4]}'), "has no 'shape' field"),
        ("unknown_field", one('"a":{"dtype":"F32","shape":[1],"offsets":[0,4]}'), "unknown field 'offsets'"),
        ("tensor_not_object", one('"a":[1]'), "must be an object"),
        ("metadata_value_number", raw_file(b'{"__metadata__":{"k":1}}'), "must be a string"),
        ("metadata_not_object", raw_file(b'{"__metadata__":"x"}'), "expected '{'"),
        ("metadata_duplicate_key", raw_file(b'{"__metadata__":{"k":"a","k":"b"}}'), "duplicate __metadata__ key"),
        ("metadata_twice", raw_file(b'{"__metadata__":{},"__metadata__":{}}'), "duplicate key '__metadata__'"),
        ("truncated_data", entries([("a", "F64", [1], [0, 8])], four), "past the end of the 4-byte data buffer"),
        ("u64_above_int64", entries([("a", "U64", [1], [0, 8])], struct.pack("<Q", 2**63)),
         "element 0 is 9223372036854775808, which does not fit kiln's int64"),
        ("unterminated_string", raw_file(b'{"abc'), "unterminated string"),
    ]


def reference_accepts(path):
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                f.get_tensor(k)
            f.metadata()
        return True
    except Exception:
        return False


def write_bad_corpus():
    for name in os.listdir(OUT):
        if name.startswith("bad_"):
            os.remove(os.path.join(OUT, name))
    lines = []
    for name, data, text in bad_cases():
        fname = f"bad_{name}.safetensors"
        path = os.path.join(OUT, fname)
        with open(path, "wb") as f:
            f.write(data)
        stricter = reference_accepts(path)
        lines.append(f"{fname}\t{text}" + ("\tstricter" if stricter else ""))
    with open(os.path.join(OUT, "bad_cases.txt"), "w") as f:
        f.write("# file\ttext kiln's [load_safetensors] error must contain\t(stricter: the reference reader "
                "accepts it)\n")
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} malformed files; the reference reader accepts: "
          + ", ".join(l.split("\t")[0] for l in lines if l.endswith("stricter")))


def check_kiln_files():
    """Loads what kiln's tests wrote and compares with the values the C++ test put in."""
    path = os.path.join(OUT, "kiln_written.safetensors")
    t = load_file(path)
    with safe_open(path, framework="pt") as f:
        md = f.metadata()
    assert md == {"producer": "kiln", "text": "caf\u00e9 \"quoted\" \\ \n tab\t"}, md
    assert torch.equal(t["f32"], torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1)
    assert t["f64"].dtype == torch.float64 and t["f64"].tolist()[:3] == [1.0 / 3.0, -0.0, 1e300]
    assert math.isnan(t["f64"][3]) and t["f64"][4] == math.inf
    assert t["i64"].tolist() == [-(2**63), -1, 0, 2**63 - 1]
    assert t["bool"].dtype == torch.bool and t["bool"].tolist() == [True, False, False, True]
    assert t["scalar"].shape == () and t["scalar"].item() == 2.5 and t["scalar"].dtype == torch.float64
    assert t["empty"].shape == (0, 5) and t["empty"].dtype == torch.int64
    # a transposed (non-contiguous) source, written row-major
    assert torch.equal(t["transposed"], (torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1).t())
    assert torch.equal(t["name \u00fc \"q\""], torch.tensor([7.0]))

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    sd = load_file(os.path.join(OUT, "kiln_module.safetensors"))
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m[0].weight, torch.arange(12, dtype=torch.float32).reshape(4, 3) / 8)
    assert torch.equal(m[0].bias, torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert torch.equal(m[1].weight, torch.ones(4) * 1.5) and torch.equal(m[1].bias, torch.ones(4) * -0.25)
    print("kiln-written files load in safetensors and torch: ok")


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--check" not in sys.argv:
        write_python_fixture()
        write_spec_fixture()
        write_16bit_fixture()
        write_module_fixture()
        assert reference_accepts(os.path.join(OUT, "spec_written.safetensors"))
        write_bad_corpus()
    if os.path.exists(os.path.join(OUT, "kiln_written.safetensors")):
        check_kiln_files()
    else:
        print("kiln_written.safetensors not there yet: run kiln_tests -tc='safetensors: kiln-written golden*' "
              "with KILN_WRITE_GOLDENS=1, then --check")


if __name__ == "__main__":
    main()
