"""The shape of a generated project, read with ast: imports flow one way, and only
the entry points take the parsed command line (issue 17)."""

import ast
import re
from pathlib import Path

import pytest

from .conftest import quikgen

EVERY_FEATURE = ["--data", "tracker=mlflow", "--data", "use_ray_tune=true",
                 "--data", "use_serve=true"]
# The functions that may take the whole argparse namespace: main.py's, the loop,
# and a search's trial (which trains with the trial's values in place of the flags').
ENTRY_POINTS = {"main": "*", "train": {"train"}, "tune": {"search_trial"}}


@pytest.fixture(scope="module", params=[("bert", "torchserve"), ("recommender", "ray")],
                ids=["bert-torchserve", "recommender-ray"])
def project(request, tmp_path_factory):
    kind, engine = request.param
    dest = tmp_path_factory.mktemp(kind) / "layout"
    result = quikgen("new", str(dest), "--defaults", "--no-git", "--kind", kind,
                     *EVERY_FEATURE, "--data", f"serve_engine={engine}")
    assert result.exit_code == 0, result.output
    return dest


def modules(project: Path) -> dict[str, ast.Module]:
    """Every module of the project by its short name: main, and the package's."""
    files = {"main": project / "main.py"}
    files.update({path.stem: path for path in (project / "layout").glob("*.py")
                  if path.stem != "__init__"})
    return {name: ast.parse(path.read_text()) for name, path in files.items()}


def imported(tree: ast.Module) -> set[str]:
    """The project modules a module imports, anywhere in it (also inside functions)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .world import World
                names.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("layout."):
                names.add(node.module.split(".")[1])
            elif node.module in ("layout", None) or (node.level == 1 and not node.module):
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "main":
                    names.add("main")
                elif alias.name.startswith("layout."):
                    names.add(alias.name.split(".")[1])
    return names


def test_no_module_imports_main_and_the_imports_have_no_cycle(project):
    trees = modules(project)
    graph = {name: imported(tree) & set(trees) for name, tree in trees.items()}
    assert [name for name, targets in graph.items() if "main" in targets] == []

    def cycle_from(start, path):
        for target in sorted(graph[start]):
            if target in path:
                return [*path[path.index(target):], target]
            found = cycle_from(target, [*path, target])
            if found:
                return found
        return None

    for name in graph:
        assert cycle_from(name, [name]) is None, " -> ".join(cycle_from(name, [name]))
    # Launching the processes and the world they train in are separate modules,
    # and only main.py launches.
    assert {"launch", "world"} <= set(graph)
    assert [name for name, targets in graph.items() if "launch" in targets] == ["main"]
    assert "launch" not in graph["world"] and "launch" not in graph["train"]
    # The loop knows nothing optional: a search reaches it through a callback.
    assert "tune" not in graph["train"] and "tune" not in graph["task"]


def test_only_the_entry_points_take_the_parsed_arguments(project):
    takers = []
    for name, tree in modules(project).items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            parameters = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            takes_args = any(
                parameter.arg == "args"
                or (parameter.annotation is not None
                    and "Namespace" in ast.unparse(parameter.annotation))
                for parameter in parameters)
            allowed = ENTRY_POINTS.get(name, set())
            if takes_args and allowed != "*" and node.name not in allowed:
                takers.append(f"{name}.{node.name}")
    assert takers == []


def test_the_loop_and_the_launcher_have_no_kind_branches():
    template = Path(__file__).resolve().parent.parent / "templates" / "project"
    for path in [template / "main.py.jinja",
                 template / "{{ package_name }}" / "train.py"]:
        jinja = re.findall(r"{%.*?%}|{{.*?}}", path.read_text(), re.S)
        assert [tag for tag in jinja if "kind" in tag] == [], path.name


def test_options_reach_the_loop_and_main_by_file_not_by_tag():
    # A tracker (or none) is its own tracking.py, with the same calls; the loop is
    # plain Python, and main.py branches only on the search.
    template = Path(__file__).resolve().parent.parent / "templates" / "project"
    assert (template / "{{ package_name }}" / "train.py").is_file()
    assert not (template / "{{ package_name }}" / "train.py.jinja").exists()
    tags = re.findall(r"{%.*?%}", (template / "main.py.jinja").read_text(), re.S)
    assert len(tags) <= 6, tags


def test_serving_varies_by_kind_and_engine_by_file_not_by_tag():
    # What differs by kind is in serving.py, what differs by engine in its module.
    package = Path(__file__).resolve().parent.parent / "templates" / "project" / "{{ package_name }}"
    for name in ("serve.py", "api.py"):
        text = (package / f"{{% if use_serve %}}{name}{{% endif %}}.jinja").read_text()
        tags = re.findall(r"{%.*?%}", text, re.S)
        assert len(tags) <= 10, (name, tags)
        assert not re.search(r"{[{%][^}]*\bkind\b", text), name


def test_train_reads_top_to_bottom():
    # train() is a list of named steps: short, and shallow enough to read at a glance.
    template = Path(__file__).resolve().parent.parent / "templates" / "project"
    tree = ast.parse((template / "{{ package_name }}" / "train.py").read_text())
    (train,) = [node for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name == "train"]
    blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try)

    def depth(node: ast.AST) -> int:
        return max((depth(child) + isinstance(child, blocks)
                    for child in ast.iter_child_nodes(node)), default=0)

    assert train.end_lineno - train.lineno + 1 <= 90
    assert depth(train) <= 4
