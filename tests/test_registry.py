"""A user's own verifier plugs in through the `ttsf.verifiers` entry-point group, no edit here."""

import sys
import textwrap

import pytest

from ttsf_core.config import ConfigError, VerifierArgs
from ttsf_core.verifiers.registry import available_verifiers, build_verifier

PLUGIN = textwrap.dedent('''
    from ttsf_core.verifiers.base import METRIC_NAMES, grades_from_scores

    class BrightnessVerifier:
        """Scores images by mean brightness: a stand-in for a user's own model."""
        name = "brightness"

        def __init__(self, args):
            self.args = args

        def score(self, prompt, images):
            grades = []
            for image in images:
                level = sum(image.convert("L").getdata()) / (255.0 * image.width * image.height) * 10
                grades.append(grades_from_scores({m: level for m in METRIC_NAMES}, f"brightness {level:.2f}"))
            return grades
''')


def _write_plugin(folder):
    (folder / "my_brightness.py").write_text(PLUGIN)
    info = folder / "my_brightness-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-brightness\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ttsf.verifiers]\nbrightness = my_brightness:BrightnessVerifier\n")
    return folder


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """An installed distribution as pip leaves it: a module plus dist-info with entry_points.txt."""
    monkeypatch.syspath_prepend(str(_write_plugin(tmp_path)))
    yield
    sys.modules.pop("my_brightness", None)


def test_an_installed_plugin_is_found_and_grades_in_input_order(installed_plugin):
    from PIL import Image

    assert "brightness" in available_verifiers()
    verifier = build_verifier(VerifierArgs(name="brightness"))
    dark, bright = Image.new("RGB", (8, 8), (20, 20, 20)), Image.new("RGB", (8, 8), (230, 230, 230))
    grades = verifier.score("anything", [bright, dark])
    assert grades[0].score("overall_score") > 8 > 1 > grades[1].score("overall_score")


def test_a_plugin_put_on_the_path_after_a_lookup_is_still_found(tmp_path, monkeypatch):
    # available_verifiers() keeps what it scanned per import path: a path added later is scanned.
    assert "brightness" not in available_verifiers()
    monkeypatch.syspath_prepend(str(_write_plugin(tmp_path)))
    assert available_verifiers()["brightness"] == "my_brightness:BrightnessVerifier"
    monkeypatch.undo()
    assert "brightness" not in available_verifiers()


def test_unknown_names_list_what_is_available(installed_plugin):
    with pytest.raises(ConfigError, match="verifier_to_use: received 'nope', allowed: brightness, clip, gemini"):
        build_verifier(VerifierArgs(name="nope"))


def test_a_class_without_score_is_refused(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("class Broken:\n    name = 'broken'\n    def __init__(self, args): pass\n")
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ttsf.verifiers]\nbroken = broken_plugin:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="does not implement the Verifier protocol"):
        build_verifier(VerifierArgs(name="broken"))
