"""Static checks of the panel: the .ui file against the widget code and its parameter node (no Qt needed).

`test_layout.py` checks that every `self.ui.<name>` exists; this file checks the rest of the binding: the
`SlicerParameterName` properties name real parameters of matching types, names built at run time exist,
every MRML widget gets the scene, and every custom widget class is declared.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "UNetSegmentation"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "UNetSegmentation.ui"
PANEL_STATE_FILE = MODULE_DIR / "UNetSegmentationLib" / "panel_state.py"  # the parameter node and its enums
PARAMETER_CLASS = "UNetSegmentationParameterNode"

# Which widget classes the parameterNodeWrapper can bind to which annotation (its guiConnectors).
CONNECTABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"},
    "str": {"QLineEdit", "QComboBox"},
    "enum": {"QComboBox"},  # exactly QComboBox: the Enum connector checks type(widget) == qt.QComboBox
    "node": {"qMRMLNodeComboBox"},
}


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(PANEL_STATE_FILE.read_text(encoding="utf-8"))


def widgets(ui: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ui.iter("widget")}


def parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


def node_types(widget: ET.Element) -> list[str]:
    return [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]


def enum_classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    """Every enum of the module → the class that defines its methods.

    An enum is a class deriving from enum.Enum, or a module-level `Name = EnumClass("Name", members, …)` built
    with the functional API from such a class (the panel's choices come from the vocabulary's lists that way).
    """
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    enums = {name: node for name, node in classes.items() if any(ast.unparse(b) == "enum.Enum" for b in node.bases)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            base = ast.unparse(node.value.func)
            if base in enums:
                target = node.targets[0].id
                assert ast.literal_eval(node.value.args[0]) == target, f"enum {target} is named differently"
                enums[target] = enums[base]
    return enums


def parameter_fields(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Field name → (kind, annotation): kind is "bool", "int", "str", "enum" or "node"."""
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    enums = enum_classes(tree)
    fields = {}
    for statement in classes[PARAMETER_CLASS].body:
        if isinstance(statement, ast.AnnAssign):
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                annotation = annotation.slice.elts[0]
            name = ast.unparse(annotation)
            kind = "enum" if name in enums else "node" if name.startswith("vtkMRML") else name
            fields[statement.target.id] = (kind, name)
    return fields


def test_ui_root_is_the_module_widget(ui):
    root = ui.find("widget")
    assert (root.get("class"), root.get("name")) == ("qMRMLWidget", "UNetSegmentation")


def test_widget_names_are_unique(ui):
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names))


def test_bound_widgets_name_real_parameters_of_matching_type(ui, module_tree):
    fields = parameter_fields(module_tree)
    bound = {name: w for name, w in widgets(ui).items() if parameter_name(w)}
    assert bound, "no widget carries a SlicerParameterName property"
    for name, widget in bound.items():
        parameter = parameter_name(widget)
        assert parameter in fields, f"{name} binds to unknown parameter {parameter!r}"
        kind, annotation = fields[parameter]
        assert widget.get("class") in CONNECTABLE[kind], f"{name} ({widget.get('class')}) cannot show {annotation}"
        if kind == "node":
            assert annotation in node_types(widget), f"{name} does not offer {annotation} nodes"


def test_each_parameter_is_bound_at_most_once(ui):
    parameters = [parameter_name(w) for w in ui.iter("widget") if parameter_name(w)]
    assert len(parameters) == len(set(parameters))


def test_enum_parameters_have_labels_for_their_combo_boxes(module_tree):
    enums = enum_classes(module_tree)
    fields = parameter_fields(module_tree)
    assert {annotation for kind, annotation in fields.values() if kind == "enum"} <= set(enums)
    for name, node in enums.items():
        methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
        assert "label" in methods, f"enum {name} shows raw member names in its combo box"


def test_names_built_at_run_time_exist(ui, module_tree):
    extra = next(
        ast.literal_eval(n.value) for n in module_tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "EXTRA_INPUTS"
    )
    names = widgets(ui)
    for number in extra:
        assert f"inputVolume{number}Selector" in names and f"inputVolume{number}Label" in names
        assert parameter_name(names[f"inputVolume{number}Selector"]) == f"inputVolume{number}"


def test_every_mrml_widget_gets_the_scene(ui):
    mrml = {n for n, w in widgets(ui).items() if w.get("class").startswith("qMRML") and n != "UNetSegmentation"}
    connected = {
        c.findtext("receiver") for c in ui.iter("connection")
        if c.findtext("sender") == "UNetSegmentation" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml - connected == set(), "these MRML widgets would have no scene"


def test_custom_widget_classes_are_declared(ui):
    used = {w.get("class") for w in ui.iter("widget")}
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    assert {c for c in used if not c.startswith("Q")} - declared == set()


def _text(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string") or prop.findtext("bool")
    return None


def _collapsible_ancestors(ui: ET.Element, name: str) -> list[str]:
    """The ctkCollapsibleButton sections a widget sits in, innermost first."""
    parents = {child: parent for parent in ui.iter() for child in parent}
    node, found = next(w for w in ui.iter("widget") if w.get("name") == name), []
    while node in parents:
        node = parents[node]
        if node.tag == "widget" and node.get("class") == "ctkCollapsibleButton":
            found.append(node.get("name"))
    return found


def test_options_start_collapsed_and_inputs_outputs_open(ui):
    names = widgets(ui)
    assert _text(names["optionsCollapsibleButton"], "collapsed") == "true"
    for section in ("inputsCollapsibleButton", "outputsCollapsibleButton"):
        assert _text(names[section], "collapsed") in (None, "false")


def test_one_show_3d_control(ui):
    controls = [
        name for name, w in widgets(ui).items()
        if w.get("class") == "qMRMLSegmentationShow3DButton" or "3D" in (_text(w, "text") or "")
    ]
    assert controls == ["showIn3DCheckBox"]


def test_install_button_and_missing_packages_line_sit_beside_apply_in_view(ui):
    parents = {child: parent for parent in ui.iter() for child in parent}
    by_name = widgets(ui)
    row = parents[parents[by_name["applyButton"]]]  # widget → layout item → layout
    assert row is parents[parents[by_name["installDependenciesButton"]]]
    for name in ("applyButton", "installDependenciesButton", "dependencyStatusLabel"):
        assert _collapsible_ancestors(ui, name) == [], f"{name} is hidden in a collapsible section"
