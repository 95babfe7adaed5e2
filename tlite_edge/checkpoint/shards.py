"""A checkpoint's safetensors shards: single file or sharded with ``model.safetensors.index.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tlite_edge.checkpoint.safetensors import SafetensorsFile, TensorInfo
from tlite_edge.errors import TliteError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class Checkpoint:
    """All tensors of a checkpoint folder, each opened lazily from its validated shard."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.shards: dict[str, SafetensorsFile] = {}
        self.tensors: dict[str, TensorInfo] = {}
        weight_map = self._weight_map() if (self.folder / INDEX_NAME).exists() else None
        for shard in self._shard_names(weight_map):
            self.shards[shard] = SafetensorsFile(self.folder / shard)
        for shard, st in self.shards.items():
            for name, info in st.tensors.items():
                if name in self.tensors:
                    raise TliteError(
                        st.path, f"tensor {name!r} also appears in {self.tensors[name].path.name}"
                    )
                if weight_map is not None and weight_map.get(name) != shard:
                    where = weight_map.get(name)
                    msg = "not listed in the index" if where is None else f"listed in the index under {where}"
                    raise TliteError(st.path, f"tensor {name!r} is {msg}")
                self.tensors[name] = info
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self.tensors:
                    raise TliteError(
                        self.folder / shard, f"tensor {name!r} listed in {INDEX_NAME} is missing"
                    )

    def _shard_names(self, weight_map: dict[str, str] | None) -> list[str]:
        if weight_map is not None:
            listed = sorted(set(weight_map.values()))
            for shard in listed:
                if not (self.folder / shard).is_file():
                    raise TliteError(self.folder / shard, f"shard listed in {INDEX_NAME} is missing")
            extra = sorted({p.name for p in self.folder.glob("*.safetensors")} - set(listed))
            if extra:
                raise TliteError(self.folder / extra[0], f"extra shard not listed in {INDEX_NAME}")
            return listed
        if (self.folder / SINGLE_NAME).is_file():
            return [SINGLE_NAME]
        found = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if len(found) == 1:
            return found
        if len(found) > 1:
            raise TliteError(self.folder, f"{len(found)} safetensors shards but no {INDEX_NAME}")
        pickles = sorted(p.name for pat in PICKLE_PATTERNS for p in self.folder.glob(pat))
        if pickles:
            raise TliteError(
                self.folder / pickles[0],
                "pickle checkpoints are refused (they can run code when loaded); provide safetensors",
            )
        raise TliteError(self.folder, "no safetensors weights found")

    def _weight_map(self) -> dict[str, str]:
        index = self.folder / INDEX_NAME
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TliteError(index, f"unreadable index ({exc})") from None
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise TliteError(index, "index has no weight_map object")
        for shard in set(wm.values()):
            if "/" in shard or "\\" in shard or shard.startswith(".") or not shard.endswith(".safetensors"):
                raise TliteError(index, f"invalid shard name {shard!r} in weight_map")
        return wm

    def shard_of(self, name: str) -> SafetensorsFile:
        return self.shards[self.tensors[name].path.name]

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    def close(self) -> None:
        for st in self.shards.values():
            st.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
