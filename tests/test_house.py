"""The repository stands alone and stays readable: no path outside it, a short README, common.py by concern."""
import os
import subprocess

from helpers import ROOT


def repository_files():
    """Tracked and new (not ignored) files, as a clone gets them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [f for f in listed if os.path.isfile(os.path.join(ROOT, f))]


def test_no_file_of_the_product_names_a_path_outside_the_repository():
    """Tests may use our team's copy of the baseline beside the repository (and skip without it); nothing else
    may name it, nor the write-up's copy there."""
    named = []
    for path in repository_files():
        if path.startswith("tests/") or path.endswith((".png", ".jpg")):
            continue
        with open(os.path.join(ROOT, path), errors="replace") as f:
            text = f.read()
        if "../shared" in text or "shared/oracle" in text or "shared/seed" in text:
            named.append(path)
    assert not named, f"these name a path outside the repository: {named}"


def test_readme_and_common_stay_short():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert len(f.read().splitlines()) <= 200
    with open(os.path.join(ROOT, "common.py")) as f:
        assert len(f.read().splitlines()) <= 550
