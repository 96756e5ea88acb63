"""Packaging: the Dockerfile, constraints.txt, the Makefile, pyproject.toml and .dockerignore agree.

One constraints file (constraints.txt) fixes every version for both installs, the Makefile's venv
and the Docker image. The checks here are computed from the files themselves (the Dockerfile's
instructions, pyproject's requirements, the imports in radclip's source, the running environment's
installed distributions), not from hand-kept lists; the only hand-kept facts are the Ubuntu
releases' Python versions below. Each check is a plain function returning its problems; the
self-tests at the end feed each one a small bad input to prove it can fail.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
MAKEFILE = PROJECT_ROOT / "Makefile"
PYPROJECT = PROJECT_ROOT / "pyproject.toml"
PACKAGE = PROJECT_ROOT / "radclip"

# Ubuntu release -> (the version its `python3` package gives, the python3.X packages in its archive).
# From the releases' package lists (20.04 focal: 3.8, 3.9 in universe; 22.04 jammy: 3.10, 3.11 in
# universe; 24.04 noble: 3.12 only). A base image on another release fails the test until added here.
UBUNTU_PYTHON = {
    "20.04": ("3.8", {"3.8", "3.9"}),
    "22.04": ("3.10", {"3.10", "3.11"}),
    "24.04": ("3.12", {"3.12"}),
}

# Paths the image needs from the build context (the Dockerfile's final `COPY . .`), besides the
# explicit COPY sources, which are read from the Dockerfile itself.
NEEDED_IN_CONTEXT = ("pipelines", "params.yaml", "params", "dvc.yaml")

# Must never reach the build context: data (PHI), run outputs, the DVC cache, environments, git.
MUST_BE_IGNORED = (
    "data/raw/scan.dcm",
    "mlruns/1/meta.yaml",
    "mlflow.db",
    ".venv/bin/python",
    ".git/HEAD",
    ".dvc/cache/00/0123456789abcdef",
)

# torch's CUDA-only dependencies: installed in the CUDA image, absent from the CPU venv and so not locked.
UNLOCKED_CUDA_DEPENDENCY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current.append(line[:-1].strip())
            continue
        current.append(line)
        joined = " ".join(current)
        current = []
        keyword, _, arguments = joined.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ; and |), each as tokens."""
    return [shlex.split(part) for part in re.split(r"&&|\|\||;|\|", script) if part.strip()]


def pip_install_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `pip install` / `python -m pip install`, or None for another command."""
    for index, token in enumerate(tokens):
        name = token.rsplit("/", 1)[-1]
        if name in {"pip", "pip3"} and tokens[index + 1 : index + 2] == ["install"]:
            return tokens[index + 2 :]
        if name.startswith("python") and tokens[index + 1 : index + 4] == ["-m", "pip", "install"]:
            return tokens[index + 4 :]
    return None


def dockerfile_pip_installs(text: str) -> list[tuple[int, list[str]]]:
    """(instruction index, pip install arguments) for every pip install in a RUN."""
    found = []
    for index, (keyword, arguments) in enumerate(dockerfile_instructions(text)):
        if keyword == "RUN":
            for tokens in shell_commands(arguments):
                args = pip_install_args(tokens)
                if args is not None:
                    found.append((index, args))
    return found


def makefile_pip_installs(text: str) -> list[list[str]]:
    found = []
    for line in text.splitlines():
        if line.startswith("\t") and not line.strip().startswith("#"):
            for tokens in shell_commands(line.strip().lstrip("@")):
                args = pip_install_args(tokens)
                if args is not None:
                    found.append(args)
    return found


def constraint_files(args: list[str]) -> list[str]:
    files = []
    for index, arg in enumerate(args):
        if arg in {"-c", "--constraint"} and index + 1 < len(args):
            files.append(args[index + 1])
        elif arg.startswith("--constraint="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("-c") and len(arg) > 2:
            files.append(arg[2:])
    return files


def pinned(args: list[str], name: str) -> list[str]:
    """The versions `name==X` pins in pip install arguments."""
    versions = []
    for arg in args:
        if not arg.startswith("-"):
            try:
                requirement = Requirement(arg)
            except ValueError:
                continue
            if canonicalize_name(requirement.name) == canonicalize_name(name):
                versions += [spec.version for spec in requirement.specifier if spec.operator == "=="]
    return versions


def parse_constraints(text: str) -> dict[str, str]:
    """canonical name -> version of a `name==version` per line (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # one exact pin per line
        assert spec.operator == "==", f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def pyproject_requirements(pyproject: Mapping) -> list[Requirement]:
    project = pyproject["project"]
    lines = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("test", []))
    return [Requirement(line) for line in lines]


def imported_top_level_modules(package_dir: Path) -> dict[str, set[str]]:
    """Top-level module -> the files that import it (absolute imports, function-level ones included)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(package_dir.parent).as_posix())
    return found


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern, Docker's rules: relative to the context root, `*` within one
    path element, `**` across elements, `!` re-includes; a leading/trailing slash is dropped."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex, index = "", 0
        while index < len(line):
            if line.startswith("**/", index):
                regex, index = regex + "(?:.*/)?", index + 3
            elif line.startswith("**", index):
                regex, index = regex + ".*", index + 2
            elif line[index] == "*":
                regex, index = regex + "[^/]*", index + 1
            elif line[index] == "?":
                regex, index = regex + "[^/]", index + 1
            else:
                regex, index = regex + re.escape(line[index]), index + 1
        patterns.append((exception, re.compile(regex + r"\Z")))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is left out when the last pattern matching it or one of its parent folders excludes it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for exception, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not exception
    return ignored


# ---------------------------------------------------------------------------------------
# The checks: each returns its problems (empty when all is well)
# ---------------------------------------------------------------------------------------


def dockerfile_python_problems(dockerfile: str, requires_python: str) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(dockerfile)
    if any("python3.11" in arguments for _, arguments in instructions):
        problems.append("names python3.11 (not in Ubuntu 24.04's archive)")
    bases = [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]
    release = re.search(r"ubuntu(\d\d\.\d\d)", bases[-1]) if bases else None
    if release is None or release.group(1) not in UBUNTU_PYTHON:
        return problems + [f"base image {bases[-1:]}: not an Ubuntu release in UBUNTU_PYTHON"]
    default, archive = UBUNTU_PYTHON[release.group(1)]
    packages: set[str] = set()
    venv_interpreters: list[str] = []
    for keyword, arguments in instructions:
        if keyword != "RUN":
            continue
        for tokens in shell_commands(arguments):
            if "apt-get" in tokens and "install" in tokens:
                packages |= {t for t in tokens[tokens.index("install") + 1 :] if not t.startswith("-")}
            for index, token in enumerate(tokens):
                if token.startswith("python3") and tokens[index + 1 : index + 3] == ["-m", "venv"]:
                    venv_interpreters.append(token.rsplit("/", 1)[-1])
    for package in sorted(packages):
        versioned = re.fullmatch(r"python(3\.\d+)(-.+)?", package)
        if versioned and versioned.group(1) not in archive:
            problems.append(f"apt package {package}: not in Ubuntu {release.group(1)}'s archive")
    if not venv_interpreters:
        problems.append("no `python3... -m venv` found")
    for interpreter in venv_interpreters:
        version = default if interpreter == "python3" else interpreter.removeprefix("python")
        package = "python3" if interpreter == "python3" else f"python{version}"
        if package not in packages:
            problems.append(f"{interpreter} -m venv, but apt does not install {package}")
        if not ({f"{package}-venv", "python3-venv"} & packages):
            problems.append(f"{interpreter} -m venv, but apt installs no {package}-venv")
        if not SpecifierSet(requires_python).contains(version):
            problems.append(f"{interpreter} is Python {version} on Ubuntu {release.group(1)}, "
                            f"outside requires-python {requires_python!r}")
    return problems


def dockerfile_constraints_problems(dockerfile: str) -> list[str]:
    instructions = dockerfile_instructions(dockerfile)
    installs = dockerfile_pip_installs(dockerfile)
    if not installs:
        return ["no pip install in the Dockerfile"]
    problems = [f"pip install {shlex.join(args)}: no -c constraints.txt"
                for _, args in installs if "constraints.txt" not in constraint_files(args)]
    copies = [index for index, (keyword, arguments) in enumerate(instructions)
              if keyword in {"COPY", "ADD"} and "constraints.txt" in arguments.split()[:-1]]
    first_install = min(index for index, _ in installs)
    if not copies or min(copies) > first_install:
        problems.append("constraints.txt is not copied before the first pip install")
    return problems


def makefile_constraints_problems(makefile: str) -> list[str]:
    installs = makefile_pip_installs(makefile)
    if not installs:
        return ["no pip install in the Makefile"]
    problems = [f"pip install {shlex.join(args)}: no -c constraints.txt"
                for args in installs if "constraints.txt" not in constraint_files(args)]
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, flags=re.MULTILINE)
    if stamp is None or "constraints.txt" not in stamp.group(1).split():
        problems.append("the venv stamp does not depend on constraints.txt")
    return problems


def torch_pin_problems(pyproject: Mapping, constraints: Mapping[str, str], makefile: str,
                       dockerfile: str) -> list[str]:
    (torch,) = [r for r in pyproject_requirements(pyproject) if canonicalize_name(r.name) == "torch"]
    pins = {
        "pyproject.toml": [spec.version for spec in torch.specifier if spec.operator == "=="],
        "constraints.txt": [constraints["torch"]] if "torch" in constraints else [],
        "Makefile": [v for args in makefile_pip_installs(makefile) for v in pinned(args, "torch")],
        "Dockerfile": [v for _, args in dockerfile_pip_installs(dockerfile) for v in pinned(args, "torch")],
    }
    problems = [f"{where}: no torch==X pin" for where, versions in pins.items() if not versions]
    distinct = {v for versions in pins.values() for v in versions}
    if len(distinct) > 1:
        problems.append(f"torch pins differ: {pins}")
    problems += [f"torch=={v}: a local label; the pin must fit both the CPU and the CUDA build"
                 for v in sorted(distinct) if "+" in v]
    return problems


def pyproject_constraints_problems(pyproject: Mapping, constraints: Mapping[str, str]) -> list[str]:
    problems = []
    for requirement in pyproject_requirements(pyproject):
        name = canonicalize_name(requirement.name)
        if name not in constraints:
            problems.append(f"{requirement}: not in constraints.txt")
            continue
        locked = Version(constraints[name])
        for spec in requirement.specifier:
            if spec.operator == "==" and Version(spec.version) != locked:
                problems.append(f"{requirement}: constraints.txt has {locked}")
        if not requirement.specifier.contains(locked, prereleases=True):
            problems.append(f"{requirement}: not satisfied by constraints.txt's {locked}")
    return problems


def installed_vs_constraints_problems(constraints: Mapping[str, str], installed: Mapping[str, str],
                                      own: str = "radclip") -> list[str]:
    problems = []
    for name, version in sorted(constraints.items()):
        if name not in installed:
            problems.append(f"{name}=={version}: not installed")
        elif Version(Version(installed[name]).public) != Version(version):
            problems.append(f"{name}=={version}: {installed[name]} installed")
    problems += [f"{name}=={version}: installed but not in constraints.txt"
                 for name, version in sorted(installed.items())
                 if name not in constraints and name != own and not UNLOCKED_CUDA_DEPENDENCY.match(name)]
    return problems


def undeclared_import_problems(imports: Mapping[str, Iterable[str]], declared: set[str],
                               module_distributions: Mapping[str, list[str]],
                               own: str = "radclip") -> list[str]:
    problems = []
    for module, files in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in {own, "__future__"}:
            continue
        distributions = {canonicalize_name(d) for d in module_distributions.get(module, [])}
        if not distributions:
            problems.append(f"{module} (imported by {sorted(files)[0]}): no installed distribution provides it")
        elif not distributions & declared:
            problems.append(f"{module} (imported by {sorted(files)[0]}, from {sorted(distributions)}): "
                            f"not in pyproject dependencies")
    return problems


def useradd_problems(dockerfile: str) -> list[str]:
    problems, ubuntu_removed = [], False
    for keyword, arguments in dockerfile_instructions(dockerfile):
        if keyword != "RUN":
            continue
        for tokens in shell_commands(arguments):
            if tokens[:1] == ["userdel"] and tokens[-1:] == ["ubuntu"]:
                ubuntu_removed = True
            if tokens[:1] == ["useradd"]:
                uids = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in {"--uid", "-u"}]
                uids += [t.split("=", 1)[1] for t in tokens if t.startswith("--uid=")]
                if "1000" in uids and not ubuntu_removed:
                    problems.append(f"{shlex.join(tokens)}: uid 1000 is the base image's `ubuntu` user")
    return problems


def dockerignore_problems(dockerignore: str, dockerfile: str, root: Path) -> list[str]:
    patterns = dockerignore_patterns(dockerignore)
    problems = [f"{path}: not ignored" for path in MUST_BE_IGNORED if not is_ignored(path, patterns)]
    sources = set(NEEDED_IN_CONTEXT)
    for keyword, arguments in dockerfile_instructions(dockerfile):
        if keyword in {"COPY", "ADD"}:
            sources |= {s for s in arguments.split()[:-1] if not s.startswith("--") and s != "."}
    for source in sorted(sources):
        path = root / source
        if not path.exists():
            problems.append(f"{source}: copied into the image but missing from the checkout")
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(root).as_posix()
            if "__pycache__" not in relative and is_ignored(relative, patterns):
                problems.append(f"{relative}: needed in the image but excluded by .dockerignore")
    return problems


# ---------------------------------------------------------------------------------------
# The project's files
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def constraints() -> dict[str, str]:
    return parse_constraints(CONSTRAINTS.read_text(encoding="utf-8"))


def test_dockerfile_python_is_the_distributions_and_within_requires_python(pyproject):
    assert not dockerfile_python_problems(DOCKERFILE.read_text(), pyproject["project"]["requires-python"])


def test_dockerfile_installs_with_the_constraints_file():
    assert not dockerfile_constraints_problems(DOCKERFILE.read_text())


def test_makefile_installs_with_the_constraints_file():
    assert not makefile_constraints_problems(MAKEFILE.read_text())


def test_torch_pin_is_the_same_everywhere(pyproject, constraints):
    assert not torch_pin_problems(pyproject, constraints, MAKEFILE.read_text(), DOCKERFILE.read_text())
    assert constraints["torch"] == "2.13.0"


def test_pyproject_requirements_are_satisfied_by_the_constraints(pyproject, constraints):
    assert not pyproject_constraints_problems(pyproject, constraints)


def test_running_environment_matches_the_constraints(constraints):
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    assert not installed_vs_constraints_problems(constraints, installed)


def test_every_third_party_import_is_declared(pyproject):
    declared = {canonicalize_name(r.name) for r in pyproject_requirements(pyproject)}
    problems = undeclared_import_problems(imported_top_level_modules(PACKAGE), declared,
                                          importlib.metadata.packages_distributions())
    assert not problems


def test_dockerfile_user_does_not_collide_with_ubuntu():
    assert not useradd_problems(DOCKERFILE.read_text())


def test_dockerignore_keeps_data_out_and_the_sources_in():
    assert not dockerignore_problems(DOCKERIGNORE.read_text(), DOCKERFILE.read_text(), PROJECT_ROOT)


# ---------------------------------------------------------------------------------------
# Self-tests: every check fails on a bad input
# ---------------------------------------------------------------------------------------

GOOD_DOCKERFILE = """\
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv git
RUN userdel --remove ubuntu && useradd --create-home --uid 1000 radclip
RUN python3 -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
COPY radclip ./radclip
RUN pip install --upgrade -c constraints.txt pip \\
 && pip install -c constraints.txt "torch==2.13.0" \\
 && pip install -c constraints.txt -e .
COPY . .
"""


def test_self_good_dockerfile_passes_every_dockerfile_check():
    assert not dockerfile_python_problems(GOOD_DOCKERFILE, ">=3.10,<3.13")
    assert not dockerfile_constraints_problems(GOOD_DOCKERFILE)
    assert not useradd_problems(GOOD_DOCKERFILE)


@pytest.mark.parametrize(
    ("old", "new", "requires_python"),
    [
        ("python3 python3-venv", "python3.11 python3.11-venv", ">=3.10,<3.13"),  # not in 24.04's archive
        ("python3 -m venv", "python3.11 -m venv", ">=3.10,<3.13"),  # an interpreter apt never installs
        ("python3 python3-venv git", "python3 git", ">=3.10,<3.13"),  # no venv module
        ("ubuntu24.04", "ubuntu26.04", ">=3.10,<3.13"),  # a release the table does not know
        ("python3-venv git", "python3-venv python3.11-dev git", ">=3.10,<3.13"),  # named beside python3
        ("", "", ">=3.10,<3.12"),  # 24.04's 3.12 outside requires-python
    ],
)
def test_self_python_check_fails(old, new, requires_python):
    assert dockerfile_python_problems(GOOD_DOCKERFILE.replace(old, new), requires_python)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('pip install -c constraints.txt "torch', 'pip install "torch'),
        ("pip install -c constraints.txt -e .", "/opt/venv/bin/python -m pip install -e ."),
        ("COPY pyproject.toml constraints.txt ./\n", ""),  # never copied
    ],
)
def test_self_dockerfile_constraints_check_fails(old, new):
    bad = GOOD_DOCKERFILE.replace(old, new)
    assert bad != GOOD_DOCKERFILE
    assert dockerfile_constraints_problems(bad)


def test_self_dockerfile_constraints_check_fails_when_copied_after_the_install():
    bad = GOOD_DOCKERFILE.replace("COPY pyproject.toml constraints.txt ./\n", "COPY pyproject.toml ./\n")
    bad = bad.replace("COPY . .", "COPY constraints.txt ./")
    assert dockerfile_constraints_problems(bad)


GOOD_MAKEFILE = """\
$(STAMP): pyproject.toml constraints.txt
\t$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
\t$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
"""


def test_self_makefile_check_fails():
    assert not makefile_constraints_problems(GOOD_MAKEFILE)
    assert makefile_constraints_problems(GOOD_MAKEFILE.replace(" constraints.txt\n", "\n", 1))
    assert makefile_constraints_problems(GOOD_MAKEFILE.replace('-c constraints.txt -e', "-e"))


def _pyproject(*dependencies: str, test: tuple[str, ...] = ()) -> dict:
    return {"project": {"dependencies": list(dependencies), "optional-dependencies": {"test": list(test)}}}


def test_self_torch_pin_check_fails():
    constraints = {"torch": "2.13.0"}
    assert not torch_pin_problems(_pyproject("torch==2.13.0"), constraints, GOOD_MAKEFILE, GOOD_DOCKERFILE)
    assert torch_pin_problems(_pyproject("torch==2.14.1"), constraints, GOOD_MAKEFILE, GOOD_DOCKERFILE)
    assert torch_pin_problems(_pyproject("torch==2.13.0"), {"torch": "2.13.0+cpu"}, GOOD_MAKEFILE,
                              GOOD_DOCKERFILE.replace("torch==2.13.0", "torch==2.13.0+cpu"))
    assert torch_pin_problems(_pyproject("torch==2.13.0"), constraints,
                              GOOD_MAKEFILE.replace("torch==2.13.0", "torch==2.9.1"), GOOD_DOCKERFILE)
    assert torch_pin_problems(_pyproject("torch==2.13.0"), constraints, GOOD_MAKEFILE,
                              GOOD_DOCKERFILE.replace('"torch==2.13.0"', "torch"))


def test_self_pyproject_constraints_check_fails():
    constraints = {"torch": "2.13.0", "pandas": "3.1.1", "pytest": "9.2.0"}
    assert not pyproject_constraints_problems(_pyproject("torch==2.13.0", "pandas>=2.2", test=("pytest==9.2.0",)),
                                              constraints)
    assert pyproject_constraints_problems(_pyproject("torch==2.12.0"), constraints)  # pin differs
    assert pyproject_constraints_problems(_pyproject("pandas>=3.2"), constraints)  # range not met
    assert pyproject_constraints_problems(_pyproject(test=("pytest==9.1.0",)), constraints)  # the test extra
    assert pyproject_constraints_problems(_pyproject("xlrd>=2"), constraints)  # not locked


def test_self_installed_check_fails():
    constraints = {"torch": "2.13.0", "numpy": "2.4.6"}
    assert not installed_vs_constraints_problems(constraints, {"torch": "2.13.0+cpu", "numpy": "2.4.6",
                                                               "radclip": "0.1.0", "nvidia-cublas": "13.1"})
    assert installed_vs_constraints_problems(constraints, {"torch": "2.13.0", "numpy": "2.4.5"})
    assert installed_vs_constraints_problems(constraints, {"torch": "2.13.0"})
    assert installed_vs_constraints_problems(constraints, {"torch": "2.13.0", "numpy": "2.4.6", "xlrd": "2.0.2"})


def test_self_import_check_fails(tmp_path):
    package = tmp_path / "toy"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("import json\nfrom . import sub\n")
    (package / "sub" / "__init__.py").write_text("def f():\n    import numpy.linalg\n    from yaml import dump\n")
    imports = imported_top_level_modules(package)
    assert set(imports) == {"json", "numpy", "yaml"}  # the relative import is the package's own
    distributions = {"numpy": ["numpy"], "yaml": ["PyYAML"]}
    assert not undeclared_import_problems(imports, {"numpy", "pyyaml"}, distributions, own="toy")
    assert undeclared_import_problems(imports, {"numpy"}, distributions, own="toy")  # PyYAML undeclared
    assert undeclared_import_problems(imports, {"numpy", "pyyaml"}, {"numpy": ["numpy"]}, own="toy")


def test_self_useradd_check_fails():
    assert useradd_problems("RUN useradd --create-home --uid 1000 radclip\n")
    assert useradd_problems("RUN useradd -m -u 1000 radclip && userdel -r ubuntu\n")  # removed too late
    assert not useradd_problems("RUN useradd --create-home --uid 1001 radclip\n")


def test_self_dockerignore_check_fails(tmp_path):
    for path in ("pyproject.toml", "constraints.txt", "dvc.yaml", "params.yaml", "params/paper.yaml",
                 "pipelines/curate.py", "radclip/data/sources.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    good = "data/\nmlruns/\nmlflow.db\n.venv/\n.git/\n.dvc/cache/\n**/__pycache__\n"
    assert not dockerignore_problems(good, GOOD_DOCKERFILE, tmp_path)
    assert dockerignore_problems(good.replace("mlflow.db\n", ""), GOOD_DOCKERFILE, tmp_path)
    assert dockerignore_problems(good.replace("data/", "**/data"), GOOD_DOCKERFILE, tmp_path)  # radclip/data
    assert dockerignore_problems(good + "*.toml\n", GOOD_DOCKERFILE, tmp_path)  # pyproject.toml
    assert dockerignore_problems(good + "!data/raw\n", GOOD_DOCKERFILE, tmp_path)  # re-included
    assert dockerignore_problems(good, GOOD_DOCKERFILE.replace("COPY . .", "COPY README.md ./"), tmp_path)
