"""Properties of every file the template can render, checked on the template itself."""

import re

from .conftest import PROJECT_FILES

SOURCES = [path for path in PROJECT_FILES.rglob("*")
           if path.is_file() and (".py" in path.name or path.suffix == ".jinja")]


def test_every_torch_load_is_weights_only():
    calls = [(path, match.group(0)) for path in SOURCES
             for match in re.finditer(r"torch\.load\([^)]*\)", path.read_text())]
    assert calls, "the template loads tensors somewhere"
    assert [call for call in calls if "weights_only=True" not in call[1]] == []


def test_servers_bind_to_loopback_only():
    for path in SOURCES:
        text = path.read_text()
        assert "0.0.0.0" not in text, path
        for address in re.findall(r"https?://([\w.]+):", text):
            assert address in ("127.0.0.1", "localhost"), (path, address)
