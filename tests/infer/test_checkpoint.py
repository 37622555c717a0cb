"""Checkpoints: a digest that catches any changed byte, and save refusing what load refuses."""

import enum
import pathlib
import zipfile

import numpy as np
import pytest
import torch

from pyro_manifold.errors import CheckpointError, CheckpointNotFoundError, PyroManifoldError
from pyro_manifold.infer import load_checkpoint, save_checkpoint
from pyro_manifold.infer.checkpoint import content_digest


def _state():
    g = torch.Generator().manual_seed(0)
    return {"step": 7, "w": torch.randn(64, generator=g), "config": {"lr": 1e-3, "k": [1, 2]}}


def _data_records(path):
    with zipfile.ZipFile(path) as z:
        return [i for i in z.infolist() if "/data/" in i.filename and i.file_size]


@pytest.mark.parametrize("offset", [0, 17, 255])
def test_one_flipped_byte_inside_a_tensor_is_refused(tmp_path, offset):
    path = save_checkpoint(_state(), tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(path)["w"], _state()["w"])
    (record,) = _data_records(path)
    raw = bytearray(path.read_bytes())
    with open(path, "rb") as f:  # the stored (uncompressed) bytes start after the local header
        f.seek(record.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    start = record.header_offset + 30 + int(name_len) + int(extra_len)
    raw[start + offset] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"c\.pt.*digest"):
        load_checkpoint(path)


def test_a_changed_plain_value_is_refused(tmp_path):
    path = save_checkpoint({"step": 12345678}, tmp_path / "c.pt")
    raw = path.read_bytes()
    assert raw.count((12345678).to_bytes(4, "little")) == 1  # pickled as a 4-byte int
    path.write_bytes(
        raw.replace((12345678).to_bytes(4, "little"), (12345679).to_bytes(4, "little"))
    )
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)


class Colour(enum.IntEnum):
    RED = 1


def test_numpy_scalars_paths_and_int_subclasses_become_plain(tmp_path):
    state = {"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True),
             "d": pathlib.Path("/x/y"), "e": Colour.RED, "f": (np.float64(2.0),)}  # fmt: skip
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "c.pt"))
    assert loaded["a"] == 0.5 and type(loaded["a"]) is float
    assert loaded["b"] == 3 and type(loaded["b"]) is int
    assert loaded["c"] is True and loaded["d"] == "/x/y" and type(loaded["e"]) is int
    assert loaded["f"] == (2.0,)


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"obj": object()}, r"state\['obj'\]"),
        ({"cfg": {"f": lambda: 0}}, r"state\['cfg'\]\['f'\]"),
        ({"x": [1, {2.5: "k"}]}, r"state\['x'\]\[1\]: expected str or int keys"),
        ({"c": 1 + 2j}, r"state\['c'\]"),
        ({"format": "mine"}, "reserved"),
        ({"digest": "0"}, "reserved"),
        ([1, 2], "expected a dict"),
    ],
)
def test_save_refuses_before_writing_what_load_would_refuse(tmp_path, bad, where):
    path = save_checkpoint({"step": 1}, tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=where):
        save_checkpoint(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left


def test_missing_file_is_our_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.pt") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, PyroManifoldError)


def test_text_file_and_older_format_are_refused_by_name(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_checkpoint(text)
    old = tmp_path / "old.pt"
    torch.save({"format": "pyro_manifold.checkpoint/1", "step": 1}, old)
    with pytest.raises(CheckpointError, match="expected format 'pyro_manifold.checkpoint/2'"):
        load_checkpoint(old)


def test_digest_ignores_device_and_order_but_not_dtype_or_shape():
    w = torch.arange(6.0)
    assert content_digest({"a": w, "b": 1}) == content_digest({"b": 1, "a": w.clone()})
    assert content_digest({"a": w}) != content_digest({"a": w.double()})
    assert content_digest({"a": w}) != content_digest({"a": w.reshape(2, 3)})
    assert content_digest({"a": [1]}) != content_digest({"a": (1,)})
    assert content_digest({"a": 1}) != content_digest({"a": 1.0})
    assert content_digest({"a": w[::2]}) == content_digest({"a": w[::2].contiguous()})


def test_digest_of_a_fixed_state_never_changes():
    """Checkpoints written by earlier versions must keep loading: the encoding is fixed."""
    state = {
        "w": torch.arange(4, dtype=torch.float32),
        "b": torch.tensor([True, False]),
        "n": [1, "a", None, 2.5, True],
        "d": {"k": torch.zeros(0, 3), 2: (torch.arange(3, dtype=torch.int64),)},
    }
    expected = "532c3c28c458fa3c590653f20a55c9341912b66251637534ef5afdd73796921c"
    assert content_digest(state) == expected


def test_written_to_a_temporary_file_fsynced_whole_then_renamed(tmp_path, monkeypatch):
    """README: "Written atomically (a temporary file, fsync, rename ...)": the new content
    reaches the disk, whole, under a temporary name before it replaces the old checkpoint,
    and the folder's entry is synced after the rename."""
    import os
    import stat

    path = save_checkpoint({"step": 1}, tmp_path / "c.pt")  # the previous checkpoint
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        events.append(("fsync", kind, info.st_size if kind == "file" else None))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", pathlib.Path(src).parent, pathlib.Path(dst)))
        assert load_checkpoint(src)["step"] == 2  # the temporary file holds the whole state
        assert load_checkpoint(dst)["step"] == 1  # and the old checkpoint is still there
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint({"step": 2, "w": torch.ones(1000)}, path)
    monkeypatch.undo()
    size = path.stat().st_size
    assert events == [
        ("fsync", "file", size),  # the whole new content, on disk under its temporary name
        ("replace", tmp_path, path),
        ("fsync", "folder", None),
    ]
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left


def test_a_directory_is_refused_naming_the_checkpoint_inside(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointNotFoundError, match=r"found a directory \(its checkpoint\.pt"):
        load_checkpoint(tmp_path)  # resume=run_dir instead of run_dir / "checkpoint.pt"
