"""Class folders whose names differ only by spaces at their ends (`cat` and `cat `), alone or with
case: two classes, warned about as case twins are, the names quoted so that the space shows."""
from test_data_folders import _cfg, _write
from test_data_overlap import _said


def _folders(root, names):
    for name, shade in zip(names, (200, 190, 180)):
        for i in range(3):
            _write(root / name / f"{i}.png", (shade, 0, 0), tag=f"{name}{i}")
    return root


def test_class_folders_equal_but_for_spaces_at_their_ends_are_warned_about(tmp_path):
    said, bundle = _said(_cfg(_folders(tmp_path / "p", ("cat", "cat ", "dog")), tmp_path))
    assert bundle.classes == ["cat", "cat ", "dog"]
    assert said == ["class folders 'cat' and 'cat ' differ only by spaces at their ends: they are 2 classes here; "
                    "if they are one class, merge them into one folder"]


def test_case_and_spaces_together_are_one_warning_that_says_both(tmp_path):
    said, _ = _said(_cfg(_folders(tmp_path / "p", ("Cat", "\u00a0cat", "dog")), tmp_path))  # a no-break space
    assert said == ["class folders 'Cat' and '\\xa0cat' differ only by case or by spaces at their ends: they are 2 "
                    "classes here; if they are one class, merge them into one folder"]
