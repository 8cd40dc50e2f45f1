"""Static checks of the extension's layout: what ships, what the catalog entry says, what start-up imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "UNetSegmentation"
LIB_DIR = MODULE_DIR / "UNetSegmentationLib"
CORE_DIR = MODULE_DIR / "unetseg"
SLICER_SIDE = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "UNetSegmentationLib", "UNetSegmentation"}
QT = {"qt", "ctk", "PythonQt"}
PROJECT = {"unetseg", "UNetSegmentationLib", "UNetSegmentation"}

# Slicer/ExtensionsIndex schemas/slicer-extension-catalog-entry-schema-v1.0.2.json, its rules as they matter
# here (draft-07, additionalProperties false), and the categories its checker script accepts that we might use.
CATALOG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["$schema", "category", "scm_url"],
    "properties": {
        "$schema": {"type": "string", "pattern": "slicer-extension-catalog-entry-schema-v1\\.0\\.2\\.json"},
        "build_dependencies": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "build_subdirectory": {"type": "string"},
        "category": {"type": "string"},
        "dicom_support_rule": {"type": "string"},
        "enabled": {"type": "boolean"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "scm_url": {"type": "string", "pattern": "^(https://|git@|file://)"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}
ACCEPTED_CATEGORIES = {"Segmentation", "Registration", "Quantification", "Informatics", "Utilities", "Examples"}


def cmake_list(text: str, variable: str) -> list[str]:
    """Entries of `set(VARIABLE a b c)` in a CMake file, with ${MODULE_NAME} expanded."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in the CMake file"
    items = re.sub(r"#.*", "", match.group(1)).split()
    return [item.replace("${MODULE_NAME}", "UNetSegmentation") for item in items]


def cmake_set(text: str, variable: str) -> str:
    """The value of a one-line `set(VARIABLE "value")`."""
    match = re.search(rf'set\({variable}\s+"?([^")]*)"?\)', text)
    assert match, f"{variable} is not set in CMakeLists.txt"
    return match.group(1).strip()


def module_cmake() -> str:
    return (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")


def test_every_python_file_is_listed_in_module_scripts():
    listed = set(cmake_list(module_cmake(), "MODULE_PYTHON_SCRIPTS"))
    present = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert present - listed == set(), "Python files missing from MODULE_PYTHON_SCRIPTS (they would not ship)"
    assert listed - present == set(), "MODULE_PYTHON_SCRIPTS lists files that do not exist"


def test_every_resource_is_listed_and_exists():
    listed = set(cmake_list(module_cmake(), "MODULE_PYTHON_RESOURCES"))
    resource_files = [p for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()]
    resource_files += list((CORE_DIR / "models" / "schemas").glob("*.json"))
    present = {p.relative_to(MODULE_DIR).as_posix() for p in resource_files}
    assert present - listed == set(), "resources missing from MODULE_PYTHON_RESOURCES (they would not ship)"
    assert listed - present == set(), "MODULE_PYTHON_RESOURCES lists files that do not exist"


def test_module_cmake_builds_scripted_module_with_tests():
    text = module_cmake()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmake_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(UNetSegmentation\)", text)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert cmake_set(text, f"EXTENSION_{key}"), f"EXTENSION_{key} is empty"
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(UNetSegmentation)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in text
    for key in ("ICONURL", "SCREENSHOTURLS"):  # raw URLs of files in this repository: the files must exist
        for url in cmake_set(text, f"EXTENSION_{key}").split():
            assert (ROOT / url.split("/main/", 1)[1]).is_file(), f"EXTENSION_{key} names a missing file: {url}"
    assert (ROOT / "LICENSE").is_file()


def test_catalog_entry_validates_and_agrees_with_cmake():
    entry_path = ROOT / "UNetSegmentation.json"
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    jsonschema.validate(entry, CATALOG_SCHEMA)
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert entry_path.stem == re.search(r"project\((\w+)\)", cmake).group(1), "JSON name must equal project()"
    assert not entry_path.stem.startswith("Slicer"), "ExtensionsIndex refuses names starting with 'Slicer'"
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert entry["category"] == cmake_set(cmake, "EXTENSION_CATEGORY")
    depends = cmake_set(cmake, "EXTENSION_DEPENDS")
    assert entry.get("build_dependencies", []) == ([] if depends == "NA" else depends.split())


def _imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_module_file_has_no_top_level_heavy_import():
    tree = ast.parse((MODULE_DIR / "UNetSegmentation.py").read_text(encoding="utf-8"))
    heavy = _imports(tree, top_level_only=True) & {"torch", "monai", "SimpleITK", "onnxruntime", "numpy"}
    assert not heavy, f"UNetSegmentation.py imports {heavy} at module level; Slicer start-up must stay fast"


def test_module_file_only_wires_the_lib_package():
    """Metadata, sample data and the self-test live in the module file; the widget and logic come from the Lib
    package (as SlicerNNUnet does), re-exported where Slicer and `from UNetSegmentation import …` look."""
    text = (MODULE_DIR / "UNetSegmentation.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150
    tree = ast.parse(text)
    assert {n.name for n in tree.body if isinstance(n, ast.ClassDef)} == {"UNetSegmentation", "UNetSegmentationTest"}
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"UNetSegmentationLogic", "UNetSegmentationWidget"} <= imported


def test_core_never_imports_the_slicer_side():
    for path in CORE_DIR.rglob("*.py"):
        names = _imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=False)
        assert not names & SLICER_SIDE, f"core module {path.relative_to(MODULE_DIR)} imports {names & SLICER_SIDE}"


def test_only_the_widget_imports_qt():
    for path in [MODULE_DIR / "UNetSegmentation.py", *LIB_DIR.rglob("*.py")]:
        if path.name == "widget.py":
            continue
        names = _imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=False)
        assert not names & QT, f"{path.relative_to(MODULE_DIR)} imports {names & QT}; only the widget may"


def _project_imports(path: Path) -> set[str]:
    """Dotted names of the project's modules that ``path`` imports, at any depth of the file."""
    name = ".".join(path.relative_to(MODULE_DIR).with_suffix("").parts)
    package = name.removesuffix(".__init__") if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base]) if base else ".".join(up)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _import_graph() -> dict[str, set[str]]:
    files = {}
    for path in MODULE_DIR.rglob("*.py"):
        parts = path.relative_to(MODULE_DIR).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        deps = set()
        for target in _project_imports(path):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _imports_the_project(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] in PROJECT
    return isinstance(node, ast.Import) and any(alias.name.split(".")[0] in PROJECT for alias in node.names)


def test_in_function_imports_of_the_project_say_why():
    """An import of the project's own code inside a function is allowed only to keep a heavy package unloaded."""
    unexplained = []
    for path in MODULE_DIR.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if _imports_the_project(node) and "# lazy:" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(MODULE_DIR)}:{node.lineno}")
    assert not unexplained, f"in-function imports of the project without a '# lazy: <package>' reason: {unexplained}"


def test_no_import_circles():
    assert _circles(_import_graph()) == []


def test_circle_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", cwd=ROOT, check=True
    )
    return set(out.stdout.strip().split(","))


@pytest.mark.parametrize(
    "statement",
    [
        "import UNetSegmentationLib",
        "import unetseg.image, unetseg.phantoms, unetseg.cli",
        "from unetseg.cli import build_parser; build_parser()",
    ],
)
def test_light_imports_do_not_load_torch_or_monai(statement):
    loaded = _modules_loaded_by(statement)
    assert not loaded & {"torch", "monai"}, f"`{statement}` loaded {loaded & {'torch', 'monai'}}"


@pytest.mark.parametrize("module", ["logic", "scene_io", "segment_import", "training_scene"])
def test_slicer_bridge_import_does_not_load_torch(module):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    loaded = _modules_loaded_by(f"import UNetSegmentationLib.{module}")
    assert not loaded & {"torch", "monai"}


def test_widget_uses_only_names_defined_in_ui_file():
    ui_path = MODULE_DIR / "Resources" / "UI" / "UNetSegmentation.ui"
    ui_names = set(re.findall(r'<widget class="[^"]+" name="([^"]+)"', ui_path.read_text(encoding="utf-8")))
    panel_files = [MODULE_DIR / "UNetSegmentation.py", *sorted(LIB_DIR.glob("*.py"))]
    code = "\n".join(path.read_text(encoding="utf-8") for path in panel_files)
    used = set(re.findall(r"(?:self|widget)\.ui\.(\w+)", code))
    assert "applyButton" in re.findall(r"self\.ui\.(\w+)", (LIB_DIR / "widget.py").read_text(encoding="utf-8"))
    assert used <= ui_names, f"widget names used in code but absent from the .ui: {sorted(used - ui_names)}"


def test_unetseg_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "unetseg", "--version"], capture_output=True, text=True, encoding="utf-8"
    )
    assert out.returncode == 0 and out.stdout.startswith("unetseg ")
    out = subprocess.run(
        [sys.executable, "-m", "unetseg", "--help"], capture_output=True, text=True, encoding="utf-8"
    )
    assert out.returncode == 0 and "usage: unetseg" in out.stdout


def _text_io_without_encoding(tree: ast.AST) -> list[int]:
    """Lines that open, read or write text, or decode a subprocess's output, without naming an encoding."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if "encoding" in keywords:
            continue
        if name in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif name == "open":
            args = node.args[1:] if isinstance(func, ast.Name) else node.args  # open(path, mode) / path.open(mode)
            mode = keywords.get("mode", args[0] if args else None)
            archive_member = mode is not None and not isinstance(mode, ast.Constant)  # zipfile's zf.open(info)
            if not archive_member and not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                lines.append(node.lineno)
        elif name in ("run", "Popen", "check_output") and any(
            isinstance(keywords.get(k), ast.Constant) and keywords[k].value is True
            for k in ("text", "universal_newlines")
        ):
            lines.append(node.lineno)
    return lines


def test_every_text_io_names_its_encoding():
    """slicer-core's VTK switches the process locale to C, so text I/O that relies on the locale's encoding
    breaks on non-ASCII names and figures inside Slicer: every open/read_text/write_text and text-mode
    subprocess call names its encoding (ruff's PLW1514 would check this, but it is preview-only). The module and
    the benchmarks are checked: they run in users' processes; the tests write ASCII fixtures."""
    offenders = []
    for folder in (MODULE_DIR, ROOT / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}:{line}"
                          for line in _text_io_without_encoding(ast.parse(path.read_text(encoding="utf-8")))]
    assert not offenders, "text I/O without encoding=: " + ", ".join(offenders)


def test_the_readme_layout_names_every_module():
    """The README's map is drawn from the tree: every module of the core and the Slicer side is named in it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- layout:start -->", 1)[1].split("<!-- layout:end -->", 1)[0]
    named = set(re.findall(r"[\w.]+\.py", block))
    missing = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for folder in (CORE_DIR, LIB_DIR)
        for p in folder.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.name not in named
    )
    assert not missing, f"modules missing from the README's layout section: {missing}"
