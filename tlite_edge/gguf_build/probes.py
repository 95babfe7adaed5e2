"""Probe strings for the tokenizer parity check, generated at run time (deterministic, >= 1,000).

Russian and mixed ru/en prose (the packaged calibration text when installed, else built-in sentences),
digit and number runs, whitespace and newline runs, code, emoji, apostrophes, and the vocabulary's own
words whose split depends on ``ignore_merges`` (found by tokenizing every vocabulary entry both ways:
a wrong llama-bpe/smaug-bpe label cannot pass the check).
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer

from tlite_edge.errors import TliteError

MIN_PROBES = 1000
MERGE_WORDS = 300  # merge-sensitive vocabulary entries taken into the probes (each alone and in a sentence)

# Used when the calibration text (dataset-build) is not installed; written for this project.
RUSSIAN = (
    "Сегодня утром в парке было тихо, только воробьи спорили у фонтана.",
    "Мы сели на поезд до Казани в половине восьмого и проспали почти всю дорогу.",
    "Если даже глаза устали, дочитай главу: там самое интересное.",
    "Бабушка варила варенье из крыжовника и никому не давала пробовать пенку.",
    "В отчёте за третий квартал выручка выросла на 12,5 %, а расходы — на 3 %.",
    "Пожалуйста, перезвоните мне после обеда, я буду на совещании.",
    "Ёлка стояла в углу, и под ней лежали подарки в шуршащей бумаге.",
    "Учёные объяснили, почему осенью листья меняют цвет.",
    "Не забудь купить хлеб, молоко и две пачки гречки.",
    "Съешь же ещё этих мягких французских булок да выпей чаю.",
    "Тридцать три корабля лавировали, лавировали, да не вылавировали.",
    "Вчерашний дождь размыл дорогу, и автобус пришёл с опозданием на час.",
    "Программа считывает файл построчно и пишет результат в таблицу.",
    "Где-то вдалеке лаяла собака, а над рекой поднимался туман.",
    "Объявление на двери гласило: «Закрыто на переучёт до понедельника».",
    "Она улыбнулась и сказала, что всё будет хорошо.",
    "Чтобы включить режим энергосбережения, откройте настройки и выберите «Питание».",
    "Кошка спала на подоконнике, не обращая внимания на шум за окном.",
    "По прогнозу синоптиков, в выходные ожидается до минус пятнадцати градусов.",
    "Экзамен перенесли на среду, потому что преподаватель заболел.",
    "Мальчик долго смотрел на звёзды и думал о далёких планетах.",
    "Счёт в банке открыли за десять минут, без очередей и лишних бумаг.",
    "Щенок радостно вилял хвостом, увидев хозяина у калитки.",
    "Жёлтые листья кружились в воздухе и мягко ложились на тротуар.",
)
ENGLISH = ("the model", "machine learning", "GPU memory", "open source", "Hello world", "pull request")
CODE = (
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += x[i];\n}",
    'if __name__ == "__main__":\n    main()',
    "SELECT id, имя FROM users WHERE age >= 18 ORDER BY id;",
    '{"ключ": [1, 2.5, null, true], "b": {"c": "d"}}',
    '<div class="row"><span>Текст</span></div>',
    "x = [i ** 2 for i in range(10) if i % 2]",
    "git commit -m 'fix: опечатка в README'",
    "#include <stdio.h>\nint main(void) { return 0; }",
    'fn main() { println!("{}", 42); }',
)
EMOJI = ("😀", "🎉", "👍🏽", "🇷🇺", "👨‍👩‍👧‍👦", "❤️", "🤖", "🔥🔥🔥", "☕", "✅")
APOSTROPHES = (
    "it's",
    "IT'S",
    "don't",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "O'Neil",
    "rock'n'roll",
    "д'Артаньян",
    "Жанна д’Арк",
    "'quoted'",
    "’curly’",
    "l'été",
    "can't won't",
)
SPACES = (" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\n\t", "    \n", "\u00a0", "\u3000")
WORD = re.compile(r"\w+", re.U)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def token_text(token: str) -> str | None:
    """A byte-level vocabulary entry as text (None when its bytes are not whole UTF-8)."""
    decoder = _byte_decoder()
    try:
        return bytes(decoder[ch] for ch in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def merge_sensitive_words(tok: dict[str, Any], hf: Tokenizer, limit: int = MERGE_WORDS) -> list[str]:
    """Vocabulary entries that tokenize differently with ``ignore_merges`` flipped, Cyrillic first."""
    model = tok.get("model") or {}
    flipped_tok = {**tok, "model": {**model, "ignore_merges": not model.get("ignore_merges", False)}}
    try:
        flipped = Tokenizer.from_str(json.dumps(flipped_tok))
    except Exception as exc:  # tokenizers raises its own exception type
        raise TliteError("tokenizer.json", f"cannot load with ignore_merges flipped ({exc})") from None
    texts = sorted({t for entry in model.get("vocab", {}) if (t := token_text(entry)) and len(t) > 2})
    ours = hf.encode_batch(texts, add_special_tokens=False)
    other = flipped.encode_batch(texts, add_special_tokens=False)
    differ = [t for t, a, b in zip(texts, ours, other, strict=True) if a.ids != b.ids]
    differ.sort(key=lambda t: (not re.search("[а-яё]", t, re.I), len(t), t))
    return differ[:limit]


def russian_lines(limit: int = 500) -> list[str]:
    """Sentences of the packaged calibration text, else the built-in ones."""
    from tlite_edge.texts import default_text

    try:
        path, _ = default_text()
        text = path.read_text(encoding="utf-8")
    except (TliteError, OSError, UnicodeDecodeError):
        return list(RUSSIAN)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?…])\s+", text)]
    return [s for s in sentences if 10 <= len(s) <= 400][:limit] or list(RUSSIAN)


def probe_strings(tok: dict[str, Any], hf: Tokenizer) -> list[str]:
    """The probe set: every category above, at least ``MIN_PROBES`` distinct strings."""
    rng = random.Random(1)
    prose = russian_lines()
    words = [w for s in prose[:200] for w in WORD.findall(s)] or ["слово"]
    merge_words = merge_sensitive_words(tok, hf)
    out = [*prose, *CODE, *EMOJI, *APOSTROPHES]
    out += [f"{rng.choice(prose)} ({rng.choice(ENGLISH)}) {rng.choice(APOSTROPHES)}" for _ in range(150)]
    out += [
        f"{rng.choice(words)} {rng.choice(ENGLISH)}{rng.choice(EMOJI)} {rng.choice(words)}" for _ in range(60)
    ]
    out += ["".join(rng.choice("0123456789") for _ in range(n)) for n in range(1, 25)]
    out += [
        f"{rng.randint(0, 10**9)}{rng.choice(['.', ',', ' ', '-', '/', ':'])}{rng.randint(0, 999)}"
        for _ in range(60)
    ]
    out += [
        f"{rng.choice(words)}{rng.choice(SPACES)}{rng.choice(words)}{rng.choice(SPACES)}" for _ in range(120)
    ]
    out += ["".join(rng.choice(SPACES) for _ in range(rng.randint(1, 6))) for _ in range(40)]
    out += [f"{rng.choice(SPACES)}{rng.choice(CODE)}{rng.choice(SPACES)}" for _ in range(20)]
    out += merge_words + [
        f"{rng.choice(prose)}{w}{rng.choice(SPACES)}{rng.choice(words)}" for w in merge_words
    ]
    out = list(dict.fromkeys(out))
    while len(out) < MIN_PROBES:  # a small text: pad with more mixed sentences, numbered to stay distinct
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" №{len(out)}.")
    return out
