"""The README's API example runs as written (and its gradcheck passes)."""

import re
from pathlib import Path

import fastbp

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert isinstance(namespace["net"], fastbp.MLP) and namespace["hist"].epochs == 20
    assert "PASS" in capsys.readouterr().out
