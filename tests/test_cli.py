"""The quikgen command line, option by option."""

import re
import string
import subprocess
import sys

import jinja2
import pexpect
import pytest
import yaml

from quikgen import __version__
from quikgen.errors import reported
from quikgen.source import source_dir

from .conftest import REPO, TEMPLATE, git, quikgen


def answers(project):
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def test_version_prints_the_package_version():
    result = quikgen("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"quikgen {__version__}"


def test_kinds_lists_every_kind_of_the_template():
    result = quikgen("kinds")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["recommender", "bert", "translation"]


def test_new_renders_commits_and_prints_next_commands(recommender):
    recorded = answers(recommender)
    assert recorded["_src_path"] == str(source_dir())
    assert recorded["_commit"] == f"v{__version__}"
    assert recorded["package_name"] == "my_recommender"
    assert recorded["kind"] == "recommender"
    assert git(recommender, "status", "--porcelain") == ""
    assert git(recommender, "log", "--format=%an <%ae>").strip() == "quikgen <quikgen@localhost>"
    assert (recommender / "my_recommender" / "train.py").is_file()


def test_new_prints_the_commands_to_run_next(tmp_path):
    result = quikgen("new", str(tmp_path / "shop-ratings"), "--defaults")
    assert result.exit_code == 0, result.output
    assert "python -m shop_ratings.data --synthetic" in result.output
    assert "python main.py" in result.output


def test_first_commit_uses_the_configured_git_identity(tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    result = quikgen("new", str(tmp_path / "proj"), "--defaults")
    assert result.exit_code == 0, result.output
    log = git(tmp_path / "proj", "log", "--format=%an <%ae>|%cn <%ce>").strip()
    assert log == "Ada Lovelace <ada@example.org>|Ada Lovelace <ada@example.org>"


def test_no_git_leaves_the_project_unversioned(tmp_path):
    result = quikgen("new", str(tmp_path / "proj"), "--defaults", "--no-git")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "proj" / "main.py").is_file()
    assert not (tmp_path / "proj" / ".git").exists()


def test_data_answers_questions(tmp_path):
    result = quikgen("new", str(tmp_path / "proj"), "--defaults",
                     "--data", "package_name=ratings_lab", "-d", "author=Grace Hopper")
    assert result.exit_code == 0, result.output
    recorded = answers(tmp_path / "proj")
    assert recorded["package_name"] == "ratings_lab" and recorded["author"] == "Grace Hopper"
    assert (tmp_path / "proj" / "ratings_lab" / "train.py").is_file()
    assert 'name = "Grace Hopper"' in (tmp_path / "proj" / "pyproject.toml").read_text()


def test_the_package_name_is_the_project_name_lowercased_with_dots_and_dashes_as_underscores():
    """copier.yml's default is the one rule: a valid project name uses letters, digits, '.',
    '_' and '-', and the rule maps each character on its own, so every one is checked."""
    question = yaml.safe_load((REPO / "copier.yml").read_text())["package_name"]
    default = jinja2.Environment().from_string(question["default"])
    allowed = string.ascii_letters + string.digits + "._-"
    for name in ["a" + character for character in allowed] + ["My-Project.v2", "Z" + allowed]:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name)
        assert default.render(project_name=name) == re.sub(r"[^a-z0-9_]", "_", name.lower()), name


@pytest.mark.parametrize(("folder", "package"), [("My-Project.v2", "my_project_v2"),
                                                 ("Shop.Ratings_2-x", "shop_ratings_2_x")])
def test_the_package_name_defaults_from_the_folder_name(tmp_path, folder, package):
    result = quikgen("new", str(tmp_path / folder), "--defaults", "--no-git")
    assert result.exit_code == 0, result.output
    assert answers(tmp_path / folder)["package_name"] == package
    assert answers(tmp_path / folder)["project_name"] == folder
    assert f"python -m {package}.data --synthetic" in result.output


def test_a_failing_first_commit_is_one_line(tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Ada\n\temail = ada@example.org\n"
                      "[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = /nonexistent/gpg\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    result = quikgen("new", str(tmp_path / "proj"), "--defaults")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: the project is rendered in {tmp_path / 'proj'}, "
                                    "but not committed: git ")
    assert "Traceback" not in result.output


def test_new_on_a_terminal_asks_the_kind_listing_each(tmp_path):
    # A user who has never heard of --kind is shown the kinds, one line each, and
    # picks bert with the arrow keys; every other question is answered with Enter.
    child = pexpect.spawn(sys.executable, ["-m", "quikgen", "new", str(tmp_path / "proj")],
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    asked = []
    # copier's questions start with its microphone; a redrawn question is not a new one.
    while child.expect(["\U0001f3a4\x1b\\[0;1m ([^\x1b\r\n]+)",
                        r"Created \S+ \((\w+) project\)"]) == 0:
        question = child.match.group(1).strip()
        if asked and asked[-1] == question:
            continue
        asked.append(question)
        if question == "What the project trains":
            child.expect("recommender: matrix factorisation")
            child.expect("bert: fine-tune a BERT-family text classifier")
            child.expect("translation: fine-tune a sequence-to-sequence translator")
            child.send("\x1b[B")  # down: the second kind
        child.send("\r")
    assert child.match.group(1) == "bert"
    assert "What the project trains" in asked
    child.expect(pexpect.EOF)
    assert answers(tmp_path / "proj")["kind"] == "bert"


def test_kind_option_is_recorded(tmp_path):
    result = quikgen("new", str(tmp_path / "proj"), "--kind", "recommender")
    assert result.exit_code == 0, result.output
    assert answers(tmp_path / "proj")["kind"] == "recommender"


@pytest.fixture
def template_repo(tmp_path):
    """A git copy of the template with two tagged versions; v2 changes the README."""
    repo = tmp_path / "template-src"
    subprocess.run(["cp", "-r", str(TEMPLATE), str(repo)], check=True)
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *identity, "commit", "-qm", "v1")
    git(repo, "tag", "v1.0.0")
    readme = repo / "templates" / "project" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nTemplate version two.\n")
    git(repo, *identity, "commit", "-qam", "v2")
    git(repo, "tag", "v2.0.0")
    return repo


def test_template_option_renders_another_source_at_its_newest_tag(tmp_path, template_repo):
    result = quikgen("new", str(tmp_path / "proj"), "--defaults", "--template", str(template_repo))
    assert result.exit_code == 0, result.output
    assert answers(tmp_path / "proj")["_commit"] == "v2.0.0"
    assert "Template version two." in (tmp_path / "proj" / "README.md").read_text()


def test_vcs_ref_picks_a_tag_of_the_source(tmp_path, template_repo):
    result = quikgen("new", str(tmp_path / "proj"), "--defaults",
                     "--template", str(template_repo), "--vcs-ref", "v1.0.0")
    assert result.exit_code == 0, result.output
    assert answers(tmp_path / "proj")["_commit"] == "v1.0.0"
    assert "Template version two." not in (tmp_path / "proj" / "README.md").read_text()


def test_the_copier_internals_that_questions_py_reads_are_there(template_repo):
    # copier has no public way to read a template's questions before rendering it;
    # questions.py uses copier's Template. This pins what it relies on, so a copier
    # release that changes them fails here, not in a user's `quikgen new --template`.
    from quikgen.questions import Template

    template = Template(url=str(template_repo), ref="v1.0.0")
    try:
        assert template.questions_data["kind"]["default"] == "recommender"
        assert template.commit == "v1.0.0"
    finally:
        template._cleanup()


def test_update_takes_a_newer_template_tag(tmp_path, template_repo):
    project = tmp_path / "proj"
    assert quikgen("new", str(project), "--defaults", "--template", str(template_repo),
                   "--vcs-ref", "v1.0.0").exit_code == 0
    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert "README.md" in result.output
    assert answers(project)["_commit"] == "v2.0.0"
    assert "Template version two." in (project / "README.md").read_text()


def test_a_changed_template_gets_a_new_tag_and_an_unchanged_one_reuses_it(tmp_path, monkeypatch):
    from quikgen.source import publish

    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    template = tmp_path / "template"
    subprocess.run(["cp", "-r", str(TEMPLATE), str(template)], check=True)
    assert publish("1.2.0", template)[1] == "v1.2.0"
    assert publish("1.2.0", template)[1] == "v1.2.0"
    (template / "templates" / "project" / "NOTES.md").write_text("edited in a checkout\n")
    assert publish("1.2.0", template)[1] == "v1.2.0.post1"
    assert publish("1.3.0", template)[1] == "v1.3.0"
    assert git(tmp_path / "home" / "template", "status", "--porcelain") == ""


# --- bad input: one line, non-zero exit, nothing written --------------------------------

@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "package_name=class"], "package_name 'class' is a Python keyword"),
        (["--data", "package_name=my-pkg!"], "package_name must be a lowercase Python identifier"),
        (["--data", "package_name=torch"], "would shadow the module of that name"),
        (["--data", "package_name"], "--data 'package_name' is not KEY=VALUE"),
        (["--data", "use_mlfow=true"], "--data use_mlfow: the template asks no such question"),
        (["--data", "use_serve=maybe"], "answer use_serve=true or use_serve=false"),
        (["--data", "tracker=neptune"], "tracker is one of none, mlflow, tensorboard, wandb"),
        (["--data", "use_mlflow=true"], "the template now asks this as tracker; write --data tracker=mlflow"),
        (["--kind", "gan"], "unknown kind 'gan'; choose one of: recommender, bert, translation"),
    ],
)
def test_bad_answers_are_refused_and_write_nothing(tmp_path, args, message):
    dest = tmp_path / "proj"
    result = quikgen("new", str(dest), "--defaults", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not dest.exists()


def test_invalid_project_name_is_refused(tmp_path):
    result = quikgen("new", str(tmp_path / "my-pkg!"), "--defaults")
    assert result.exit_code == 1
    assert "project_name must start with a letter" in result.output
    assert not (tmp_path / "my-pkg!").exists()


def test_a_value_error_of_quikgen_itself_keeps_its_traceback():
    # copier refuses answers with ValueError; the same error from quikgen is a bug,
    # and one line would hide where it came from.
    with pytest.raises(ValueError, match="a bug"), reported():
        int("a bug")


def test_non_empty_destination_is_refused_and_left_alone(tmp_path):
    dest = tmp_path / "proj"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    result = quikgen("new", str(dest), "--defaults")
    assert result.exit_code == 1
    assert "is not empty" in result.output
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "mine"


def test_destination_that_is_a_file_is_refused(tmp_path):
    dest = tmp_path / "proj"
    dest.write_text("mine")
    result = quikgen("new", str(dest), "--defaults")
    assert result.exit_code == 1
    assert "is a file" in result.output
    assert dest.read_text() == "mine"


def test_update_outside_a_project_is_refused(tmp_path):
    result = quikgen("update", str(tmp_path))
    assert result.exit_code == 1
    assert "is not a quikgen project" in result.output


def test_update_refuses_an_answer_to_no_question_and_changes_nothing(tmp_path):
    project = tmp_path / "proj"
    assert quikgen("new", str(project), "--defaults").exit_code == 0
    answers = (project / ".copier-answers.yml").read_text()
    result = quikgen("update", str(project), "--data", "use_serving=true")
    assert result.exit_code == 1
    assert "--data use_serving: the template asks no such question; it asks project_name" \
        in result.output
    assert (project / ".copier-answers.yml").read_text() == answers


def test_update_refuses_a_dirty_tree_and_names_the_files(tmp_path):
    project = tmp_path / "proj"
    assert quikgen("new", str(project), "--defaults").exit_code == 0
    (project / "main.py").write_text((project / "main.py").read_text() + "# my edit\n")
    result = quikgen("update", str(project))
    assert result.exit_code == 1
    assert "uncommitted: main.py" in result.output
    assert (project / "main.py").read_text().endswith("# my edit\n")
