"""The README's tour runs as written (its Python blocks, in order, in one namespace)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_tour_runs():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3, "the README's tour lost its Python examples"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    model, optimizer = namespace["model"], namespace["optimizer"]
    assert all(p.grad is not None and (p.grad != 0).any() for p in model.parameters())
    assert [state["step"] for state in optimizer.state] == [1] * len(optimizer.params)   # one Adam update each
    assert namespace["generator"].latent_dim == 100


def test_readme_names_its_test_command():
    text = README.read_text()
    assert re.search(r"<!-- test-command -->\n```bash\npython -m pytest -q\n```", text)
