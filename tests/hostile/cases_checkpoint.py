"""Crafted checkpoints for convert: safetensors shards and index, config.json, tokenizer, chat template."""

from __future__ import annotations

import json
from collections.abc import Callable

from hostile_kit import (
    CONVERT,
    CONVERT_T,
    INDEX,
    SHARD1,
    SHARD2,
    Area,
    Builder,
    edit_json,
    edit_shard_header,
    first_tensor,
    replace_file,
    shard_parts,
    write_shard,
)

# --- safetensors ------------------------------------------------------------------------------


def st_header_bytes(raw: bytes, hlen: int | None = None) -> Builder:
    def build(a: Area) -> None:
        _, data = shard_parts(a.hf / SHARD1)
        write_shard(a.hf / SHARD1, raw, data, hlen)

    return build


def st_absurd_length(a: Area) -> None:
    header, data = shard_parts(a.hf / SHARD1)
    write_shard(a.hf / SHARD1, header, data, hlen=2**63 + 5)


def st_length_past_eof(a: Area) -> None:
    header, data = shard_parts(a.hf / SHARD1)
    write_shard(a.hf / SHARD1, header, data, hlen=(a.hf / SHARD1).stat().st_size + 4096)


def st_tensor(change: Callable[[dict, dict], object]) -> Builder:
    """Change the first tensor's entry (and maybe the whole header) of shard 1."""

    def build(a: Area) -> None:
        edit_shard_header(a.hf / SHARD1, lambda h: change(h, h[first_tensor(h)]))

    return build


def st_overlap(a: Area) -> None:
    def change(h: dict) -> None:
        norms = [k for k in h if k.endswith("layernorm.weight")]
        h[norms[1]]["data_offsets"] = list(h[norms[0]]["data_offsets"])

    edit_shard_header(a.hf / SHARD1, change)


def st_shrink_shape(h: dict, e: dict) -> None:
    e["shape"] = [e["shape"][0], e["shape"][1] - 1]


def st_duplicate_key(a: Area) -> None:
    header, data = shard_parts(a.hf / SHARD1)
    name = first_tensor(header)
    raw = json.dumps(header).encode()
    dup = json.dumps({name: header[name]}).encode()[1:-1]
    write_shard(a.hf / SHARD1, raw[:-1] + b"," + dup + b"}", data)


def st_duplicate_across_shards(a: Area) -> None:
    h1, _ = shard_parts(a.hf / SHARD1)
    h2, data = shard_parts(a.hf / SHARD2)
    norm = next(k for k in h1 if k.endswith("layernorm.weight"))
    entry = dict(h1[norm])
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [len(data), len(data) + size]
    h2[norm] = entry
    write_shard(a.hf / SHARD2, h2, data + bytes(size))


def st_long_int(a: Area) -> None:
    """A JSON header with a 5000-digit integer (Python refuses to parse it)."""
    header, data = shard_parts(a.hf / SHARD1)
    raw = json.dumps(header).encode().replace(b'"shape": [', b'"shape": [1' + b"0" * 5000 + b", ", 1)
    write_shard(a.hf / SHARD1, raw, data)


def index(change: Callable[[dict], object]) -> Builder:
    return lambda a: edit_json(a.hf / INDEX, lambda i: change(i["weight_map"]))


def index_drop_first(wm: dict) -> None:
    del wm[next(iter(wm))]


def index_move_first(wm: dict) -> None:
    wm[next(iter(wm))] = SHARD2


# --- config.json and the tokenizer ------------------------------------------------------------


def config(**changes: object) -> Builder:
    return lambda a: edit_json(a.hf / "config.json", lambda c: c.update(changes))


def config_drop(key: str) -> Builder:
    return lambda a: edit_json(a.hf / "config.json", lambda c: c.pop(key))


def raw_file(name: str, data: bytes | None) -> Builder:
    def build(a: Area) -> None:
        if data is None:
            (a.hf / name).unlink()
        else:
            replace_file(a.hf / name, data)

    return build


def tok_small_vocab(a: Area) -> None:
    def change(t: dict) -> None:
        t["model"]["vocab"] = dict(list(t["model"]["vocab"].items())[:1000])
        t["added_tokens"] = t["added_tokens"][:4]

    edit_json(a.hf / "tokenizer.json", change)


def tok_vocab_id(a: Area) -> None:
    edit_json(a.hf / "tokenizer.json", lambda t: t["model"]["vocab"].update({"зло": 10**12}))


def tok_added(a: Area) -> None:
    edit_json(a.hf / "tokenizer.json", lambda t: t.update(added_tokens=[5]))


def template_file(text: str) -> Builder:
    return lambda a: a.template.write_text(text, encoding="utf-8")


def template_in_config(text: str) -> Builder:
    return lambda a: edit_json(a.hf / "tokenizer_config.json", lambda c: c.update(chat_template=text))


ESCAPE_MRO = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
ESCAPE_GLOBALS = "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}"
ESCAPE_FORMAT = "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}"
LOOP_FOREVER = "{% set s = 'abcdefghijklmnopqrstuvwxyz' %}" + "{%for a in s%}" * 8 + "{%endfor%}" * 8
RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
MEMORY_BOMB = "{{ 'x' * 100000000000 }}{{ messages }}"
DOUBLING = "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"


CHECKPOINT_CASES: dict[str, tuple[Builder, tuple[str, ...], str, str]] = {
    # safetensors
    "st: header length absurd": (st_absurd_length, CONVERT, SHARD1, r"header length \d+ exceeds"),
    "st: header length past EOF": (st_length_past_eof, CONVERT, SHARD1, "runs past the end of the file"),
    "st: file of 3 bytes": (raw_file(SHARD1, b"abc"), CONVERT, SHARD1, "shorter than the 8-byte"),
    "st: header not JSON": (st_header_bytes(b"{not json at all}"), CONVERT, SHARD1, "not valid JSON"),
    "st: header not UTF-8": (st_header_bytes(b'{"\xff\xfe": 1}'), CONVERT, SHARD1, "not valid JSON"),
    "st: header a JSON array": (st_header_bytes(b"[1, 2, 3]"), CONVERT, SHARD1, "not a JSON object"),
    "st: header nested 100k deep": (
        st_header_bytes(b"[" * 100_000 + b"]" * 100_000),
        CONVERT,
        SHARD1,
        "not valid JSON.*Recursion",
    ),
    "st: 5000-digit integer": (st_long_int, CONVERT, SHARD1, "not valid JSON"),
    "st: duplicate key in header": (st_duplicate_key, CONVERT, SHARD1, "duplicate key"),
    "st: offsets past EOF": (
        st_tensor(lambda h, e: e.update(data_offsets=[0, 10**12])),
        CONVERT,
        SHARD1,
        "outside the file",
    ),
    "st: offsets overlapping": (st_overlap, CONVERT, SHARD1, "overlap"),
    "st: offsets reversed": (
        st_tensor(lambda h, e: e.update(data_offsets=e["data_offsets"][::-1])),
        CONVERT,
        SHARD1,
        "reversed data_offsets",
    ),
    "st: offsets not integers": (
        st_tensor(lambda h, e: e.update(data_offsets=["0", 1.5])),
        CONVERT,
        SHARD1,
        "invalid data_offsets",
    ),
    "st: dtype x shape != bytes": (st_tensor(st_shrink_shape), CONVERT, SHARD1, r"needs \d+ bytes, has \d+"),
    "st: unknown dtype": (st_tensor(lambda h, e: e.update(dtype="Q4_0")), CONVERT, SHARD1, "unknown dtype"),
    "st: negative dim": (st_tensor(lambda h, e: e.update(shape=[-2, 8])), CONVERT, SHARD1, "invalid shape"),
    "st: 100 dims": (st_tensor(lambda h, e: e.update(shape=[1] * 100)), CONVERT, SHARD1, "invalid shape"),
    "st: entry lacks offsets": (
        st_tensor(lambda h, e: e.pop("data_offsets")),
        CONVERT,
        SHARD1,
        "lacks dtype, shape or data_offsets",
    ),
    "st: duplicate name across shards": (st_duplicate_across_shards, CONVERT, SHARD2, "also appears in"),
    "index: names a missing shard": (
        index(lambda wm: wm.update({"model.extra.weight": "model-00009-of-00009.safetensors"})),
        CONVERT,
        "model-00009-of-00009.safetensors",
        "shard listed in .* is missing",
    ),
    "index: tensor missing from the index": (
        index(index_drop_first),
        CONVERT,
        SHARD1,
        "not listed in the index",
    ),
    "index: lists an absent tensor": (
        index(lambda wm: wm.update({"model.extra.weight": SHARD1})),
        CONVERT,
        SHARD1,
        "'model.extra.weight'.*missing",
    ),
    "index: wrong shard for a tensor": (index(index_move_first), CONVERT, SHARD1, f"under {SHARD2}"),
    "index: shard path escapes": (
        index(lambda wm: wm.update({"model.extra.weight": "../../etc/passwd.safetensors"})),
        CONVERT,
        INDEX,
        "invalid shard name",
    ),
    "index: not JSON": (raw_file(INDEX, b'{"weight_map": '), CONVERT, INDEX, "unreadable index"),
    # config.json
    "config: missing": (raw_file("config.json", None), CONVERT, "config.json", "missing"),
    "config: not JSON": (
        raw_file("config.json", b"\xef\xbb\xbf{'a': 1"),
        CONVERT,
        "config.json",
        "not valid JSON",
    ),
    "config: missing hidden_size": (
        config_drop("hidden_size"),
        CONVERT,
        "config.json",
        "missing key 'hidden_size'",
    ),
    "config: hidden_size a string": (
        config(hidden_size="256"),
        CONVERT,
        "config.json",
        "hidden_size must be a positive integer",
    ),
    "config: vocab 10^12": (config(vocab_size=10**12), CONVERT, "config.json", "vocab_size = 10+ is absurd"),
    "config: 10^9 layers": (
        config(num_hidden_layers=10**9),
        CONVERT,
        "config.json",
        "num_hidden_layers .* absurd",
    ),
    "config: zero heads": (
        config(num_attention_heads=0),
        CONVERT,
        "config.json",
        "num_attention_heads must be a positive integer",
    ),
    "config: hidden not divisible by heads": (
        config(num_attention_heads=3),
        CONVERT,
        "config.json",
        "inconsistent heads",
    ),
    "config: kv heads not dividing heads": (
        config(num_key_value_heads=3),
        CONVERT,
        "config.json",
        "inconsistent",
    ),
    "config: unsupported architecture": (
        config(architectures=["GPT2LMHeadModel"]),
        CONVERT,
        "config.json",
        "not supported",
    ),
    "config: rope_scaling unknown type": (
        config(rope_scaling={"rope_type": "warp-drive", "factor": 2.0}),
        CONVERT,
        "config.json",
        "rope_scaling type 'warp-drive' is not supported",
    ),
    "config: rope_scaling a list": (config(rope_scaling=[1]), CONVERT, "config.json", "must be an object"),
    "config: rope_theta a word": (
        config(rope_theta="fast"),
        CONVERT,
        "config.json",
        "rope_theta must be a positive",
    ),
    # tokenizer
    "tokenizer: missing": (raw_file("tokenizer.json", None), CONVERT, "tokenizer.json", "missing tokenizer"),
    "tokenizer: corrupt JSON": (
        raw_file("tokenizer.json", b'{"model": {"vocab": '),
        CONVERT,
        "tokenizer.json",
        "not valid JSON",
    ),
    "tokenizer: vocab smaller than embedding": (
        tok_small_vocab,
        CONVERT,
        "tokenizer.json",
        "far smaller than the 128256 embedding rows",
    ),
    "tokenizer: token id 10^12": (tok_vocab_id, CONVERT, "tokenizer.json", "outside vocab_size"),
    "tokenizer: added token not an object": (tok_added, CONVERT, "tokenizer.json", "added token id"),
    "template: escape via __mro__": (
        template_file(ESCAPE_MRO),
        CONVERT_T,
        "evil.jinja",
        "does not render.*unsafe",
    ),
    "template: escape via globals": (
        template_file(ESCAPE_GLOBALS),
        CONVERT_T,
        "evil.jinja",
        "does not render.*unsafe",
    ),
    "template: escape via str.format": (
        template_file(ESCAPE_FORMAT),
        CONVERT_T,
        "evil.jinja",
        "does not render",
    ),
    "template: loops without end": (template_file(LOOP_FOREVER), CONVERT_T, "evil.jinja", "longer than 5 s"),
    "template: endless recursion": (template_file(RECURSION), CONVERT_T, "evil.jinja", "RecursionError"),
    "template: 100 GB string": (template_file(MEMORY_BOMB), CONVERT_T, "evil.jinja", "repetition"),
    "template: doubling string": (template_file(DOUBLING), CONVERT_T, "evil.jinja", "concatenation"),
    "template: syntax error": (template_file("{% for %}"), CONVERT_T, "evil.jinja", "TemplateSyntaxError"),
    "template: escape from tokenizer_config": (
        template_in_config(ESCAPE_MRO),
        CONVERT,
        "tokenizer_config.json",
        "does not render.*unsafe",
    ),
}
