"""The flickr8k dataset: readers of the token and captions.txt formats, splits, the generator and its signal."""

import csv
import hashlib
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import get_dataset_spec, load_dataset
from harness.data.flickr8k import (
    COLOURS,
    SPLIT_FILES,
    generate_flickr8k,
    oracle_scores,
    read_flickr8k,
)
from harness.errors import HarnessError
from harness.tasks import TaskType

# Four images with their captions, in token-file order; "b" lists caption #1 before #0.
CAPTIONS = {
    "1000_aa.jpg": [("0", "A dog runs ."), ("1", "A brown dog is running .")],
    "2000_bb.jpg": [("1", "Two kids , one ball ."), ("0", "Children play .")],
    "3000_cc.jpg": [("0", "A red car ."), ("1", "A car parked ."), ("2", "Red car on a street .")],
    "4000_dd.jpg": [("0", "A cat sleeps .")],
}
NAMES = list(CAPTIONS)
SPLITS = {"train": ["1000_aa.jpg"], "dev": ["2000_bb.jpg"], "test": ["3000_cc.jpg", "4000_dd.jpg"]}
SCHEMA = ["id", "image_path", "captions", "caption_ids"]


def _write_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / name, "JPEG")


def _lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_token(root, captions=CAPTIONS, folder="."):
    _lines(root / folder / "Flickr8k.token.txt", [f"{n}#{k}\t{t}" for n, caps in captions.items() for k, t in caps])


def _write_splits(root, splits=SPLITS, folder="."):
    for role, names in splits.items():
        _lines(root / folder / SPLIT_FILES[role], names)


def _original(root, splits=SPLITS):
    """The original release's layout: Flicker8k_Dataset/, the token file and the split files."""
    _write_images(root / "Flicker8k_Dataset", NAMES)
    _write_token(root)
    _write_splits(root, splits)
    return root


def _read_quietly(root, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning expected
        return read_flickr8k(root, **options)


# ---- reader: the original layout ---------------------------------------------------------------


def test_token_format_with_split_files(tmp_path):
    root = _original(tmp_path)
    data = _read_quietly(root)
    assert data.task is TaskType.RETRIEVAL
    assert (data.name, data.id_col, data.target_col, data.group_col) == ("flickr8k", "id", "captions", None)
    assert list(data.train.columns) == SCHEMA and list(data.test.columns) == SCHEMA
    assert list(data.train["id"]) == ["1000_aa.jpg", "2000_bb.jpg"]  # train ∪ dev
    assert list(data.test["id"]) == ["3000_cc.jpg", "4000_dd.jpg"]
    row = data.train.iloc[1]
    assert row["captions"] == ["Two kids , one ball .", "Children play ."]  # file order, ids kept
    assert row["caption_ids"] == ["2000_bb.jpg#1", "2000_bb.jpg#0"]
    assert row["image_path"] == str((root / "Flicker8k_Dataset" / "2000_bb.jpg").absolute())
    assert data.test.iloc[0]["captions"] == ["A red car .", "A car parked .", "Red car on a street ."]
    assert data.meta["n_captions"] == 8
    assert (data.meta["format"], data.meta["splits"], data.meta["image_dir"]) == (
        "Flickr8k.token.txt", "files", "Flicker8k_Dataset")
    assert data.meta["image_shape"] == (30, 30, 3)  # 40x30 images: not upsampled to 224


def test_image_size_sets_the_shape_and_the_fingerprint(tmp_path):
    root = _original(tmp_path)
    small, large = _read_quietly(root), _read_quietly(root, image_size=224)
    assert large.meta["image_shape"] == (224, 224, 3) and large.options["image_size"] == 224
    assert small.fingerprint != large.fingerprint
    assert _read_quietly(root).fingerprint == small.fingerprint


def test_text_files_in_flickr8k_text_and_the_token_file_wins(tmp_path):
    _write_images(tmp_path / "Flicker8k_Dataset", NAMES)
    _write_token(tmp_path, folder="Flickr8k_text")
    _write_splits(tmp_path, folder="Flickr8k_text")
    with open(tmp_path / "captions.txt", "w", newline="") as f:  # other captions: must not be read
        csv.writer(f).writerows([["image", "caption"], *[[n, "Something else ."] for n in NAMES]])
    data = _read_quietly(tmp_path)
    assert data.meta["format"] == "Flickr8k.token.txt"
    assert data.train.iloc[0]["captions"] == ["A dog runs .", "A brown dog is running ."]


# ---- reader: the Kaggle layout -----------------------------------------------------------------


def _kaggle(root, names, captions):
    _write_images(root / "Images", names, size=(300, 260))
    with open(root / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(captions)
    return root


def test_captions_csv_with_commas_and_quotes(tmp_path):
    names = [f"{i:04d}_ab.jpg" for i in range(40)]
    tricky = 'A man says "hi, there" , waving .'
    rows = [[n, f"Caption {k} of {n} ."] for n in names for k in range(2)] + [[names[0], tricky]]
    root = _kaggle(tmp_path, names, rows)
    with pytest.warns(UserWarning, match=r"no split files .* split by a hash of their name: \d+ train, \d+ test "
                      r"\(test_fraction=0.5\)"):  # fmt: skip
        data = read_flickr8k(root, test_fraction=0.5)
    frame = pd.concat([data.train, data.test]).set_index("id")
    assert sorted(frame.index) == names
    assert frame.loc[names[0], "captions"] == [f"Caption 0 of {names[0]} .", f"Caption 1 of {names[0]} .", tricky]
    assert frame.loc[names[0], "caption_ids"] == [f"{names[0]}#{k}" for k in range(3)]
    assert (data.meta["format"], data.meta["splits"], data.meta["image_dir"]) == ("captions.txt", "hash", "Images")
    assert data.meta["image_shape"] == (224, 224, 3)
    assert data.options["test_fraction"] == 0.5
    assert 8 <= len(data.test) <= 32  # about half of 40

    # the split depends on the name only, not on the file order
    (root / "captions.txt").unlink()
    _kaggle(root, names, rows[::-1])
    with pytest.warns(UserWarning, match="hash"):
        again = read_flickr8k(root, test_fraction=0.5)
    assert sorted(again.test["id"]) == sorted(data.test["id"])


def test_hash_split_that_leaves_a_split_empty_is_an_error(tmp_path):
    root = _kaggle(tmp_path, NAMES, [[n, "A caption ."] for n in NAMES])
    with pytest.raises(HarnessError, match=r"test_fraction=1e-09 leaves no test images; add the split files"):
        read_flickr8k(root, test_fraction=1e-9)


# ---- reader: missing images and bad files ------------------------------------------------------


def test_missing_image_is_dropped_with_one_warning(tmp_path):
    root = _original(tmp_path)
    (root / "Flicker8k_Dataset" / "3000_cc.jpg").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_flickr8k(root)
    assert len(caught) == 1
    assert re.search(r"dropped 3 captions of 1 images whose file is not in Flicker8k_Dataset/ \(e.g. '3000_cc.jpg'\)",
                     str(caught[0].message))  # fmt: skip
    assert list(data.test["id"]) == ["4000_dd.jpg"] and data.meta["n_captions"] == 5
    with pytest.raises(HarnessError, match=r"Flickr8k.token.txt: 3 captions of 1 images .* on_missing_image='warn'"):
        read_flickr8k(root, on_missing_image="error")


def test_no_image_at_all_is_an_error(tmp_path):
    root = _original(tmp_path)
    for name in NAMES:
        (root / "Flicker8k_Dataset" / name).unlink()
    with pytest.raises(HarnessError, match="none of the 4 images named in Flickr8k.token.txt exists"):
        read_flickr8k(root)
    (root / "Flicker8k_Dataset").rmdir()
    with pytest.raises(HarnessError, match="no image folder; expected one of Flicker8k_Dataset/, Flickr8k_Dataset/"):
        read_flickr8k(root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2000_bb.jpg#0 Children play .", r"line 2: expected '<image>#<k><TAB><caption>', got '2000_bb.jpg#0 Chi"),
        ("2000_bb.jpg\tChildren play .", r"line 2: expected '<image>#<k><TAB><caption>'"),
        ("2000_bb.jpg#x\tChildren play .", r"line 2: expected '<image>#<k><TAB><caption>'"),
        ("2000_bb.jpg#0\t  ", r"line 2: caption '2000_bb.jpg#0' is empty"),
        ("1000_aa.jpg#0\tAgain .", r"line 2: caption id '1000_aa.jpg#0' repeats line 1"),
    ],
)
def test_malformed_token_lines(tmp_path, line, message):
    root = _original(tmp_path)
    _lines(root / "Flickr8k.token.txt", ["1000_aa.jpg#0\tA dog runs .", line])
    with pytest.raises(HarnessError, match=r"Flickr8k.token.txt, " + message):
        read_flickr8k(root)


def test_empty_caption_files(tmp_path):
    root = _original(tmp_path)
    _lines(root / "Flickr8k.token.txt", ["", "  "])
    with pytest.raises(HarnessError, match=r"Flickr8k.token.txt: no captions"):
        read_flickr8k(root)
    (root / "Flickr8k.token.txt").unlink()
    _lines(root / "captions.txt", ["image,caption"])
    with pytest.raises(HarnessError, match=r"captions.txt: no captions"):
        read_flickr8k(root)
    _lines(root / "captions.txt", ["file,text", "1000_aa.jpg,A dog ."])
    with pytest.raises(HarnessError, match=r"captions.txt, line 1: expected the header 'image,caption'"):
        read_flickr8k(root)
    _lines(root / "captions.txt", ["image,caption", "1000_aa.jpg,A dog .", "1000_aa.jpg,A dog, running ."])
    with pytest.raises(HarnessError, match=r"captions.txt, line 3: expected 2 fields .* quote captions"):
        read_flickr8k(root)
    (root / "captions.txt").unlink()
    with pytest.raises(HarnessError, match=r"no caption file; expected Flickr8k.token.txt or captions.txt"):
        read_flickr8k(root)


# ---- reader: split files -----------------------------------------------------------------------


def test_image_in_two_splits_is_an_error(tmp_path):
    root = _original(tmp_path, {**SPLITS, "dev": ["2000_bb.jpg", "3000_cc.jpg"]})
    with pytest.raises(HarnessError, match=r"Flickr_8k.testImages.txt, line 1: image '3000_cc.jpg' is also in "
                       r"Flickr_8k.devImages.txt \(line 2\)"):  # fmt: skip
        read_flickr8k(root)


def test_split_naming_an_image_without_captions_is_an_error(tmp_path):
    root = _original(tmp_path, {**SPLITS, "train": ["1000_aa.jpg", "", "9999_zz.jpg"]})
    with pytest.raises(HarnessError, match=r"Flickr_8k.trainImages.txt, line 3: image '9999_zz.jpg' has no captions "
                       r"in Flickr8k.token.txt"):  # fmt: skip
        read_flickr8k(root)


def test_empty_or_missing_split_file_is_an_error(tmp_path):
    root = _original(tmp_path, {**SPLITS, "test": []})
    with pytest.raises(HarnessError, match=r"Flickr_8k.testImages.txt: no image names"):
        read_flickr8k(root)
    (root / SPLIT_FILES["test"]).unlink()
    with pytest.raises(HarnessError, match=r"but not Flickr_8k.testImages.txt; .* both the train and the test list"):
        read_flickr8k(root)


def test_images_in_no_split_are_left_out_with_a_warning(tmp_path):
    root = _original(tmp_path, {"train": ["1000_aa.jpg", "1000_aa.jpg"], "test": ["3000_cc.jpg"]})  # no dev file
    with pytest.warns(UserWarning, match=r"left out 2 captioned images listed in no split file \(e.g. '2000_bb.jpg'\); "
                      r"merged 1 repeated names"):  # fmt: skip
        data = read_flickr8k(root)
    assert list(data.train["id"]) == ["1000_aa.jpg"] and list(data.test["id"]) == ["3000_cc.jpg"]


def test_reader_options_are_validated(tmp_path):
    root = _original(tmp_path)
    with pytest.raises(HarnessError, match=r"on_missing_image must be one of 'warn', 'error', got 'skip'"):
        read_flickr8k(root, on_missing_image="skip")
    with pytest.raises(HarnessError, match=r"test_fraction must be a number strictly between 0 and 1, got 1.5"):
        read_flickr8k(root, test_fraction=1.5)
    with pytest.raises(HarnessError, match=r"image_size must be an integer >= 8 \(pixels\) or None, got 0"):
        read_flickr8k(root, image_size=0)


# ---- generator ---------------------------------------------------------------------------------


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small embedded default, generated and read back through load_dataset."""
    data_root = tmp_path_factory.mktemp("data")
    data = load_dataset("flickr8k", data_root=data_root, generator_options={"n_images": 40}, log=lambda _: None)
    return data_root / "flickr8k", data


def test_generator_is_deterministic(tmp_path, generated):
    root, _ = generated
    generate_flickr8k(tmp_path / "again", n_images=40)
    generate_flickr8k(tmp_path / "other", seed=1, n_images=40)
    first, again = _digests(root), _digests(tmp_path / "again")
    assert first == again  # token file, split files, truth and every image byte-identical
    assert len([k for k in first if k.startswith("Flicker8k_Dataset/")]) == 40
    assert first["Flickr8k.token.txt"] != _digests(tmp_path / "other")["Flickr8k.token.txt"]


def test_generated_set_reads_back_with_the_schema(generated):
    root, data = generated
    spec = get_dataset_spec("flickr8k")
    assert (spec.task, spec.fold_scheme, spec.metric) == (TaskType.RETRIEVAL, "kfold", "rsum")
    assert (data.name, data.id_col, data.target_col, data.group_col) == ("flickr8k", "id", "captions", None)
    assert list(data.train.columns) == SCHEMA and list(data.test.columns) == SCHEMA
    assert (len(data.train), len(data.test)) == (32, 8)  # 28 train + 4 dev, 8 test
    assert data.meta["image_shape"] == (64, 64, 3) and data.options == {"image_size": 64}
    assert (data.meta["format"], data.meta["splits"], data.meta["n_captions"]) == ("Flickr8k.token.txt", "files", 200)
    assert "synthetic" in (root / "README.txt").read_text().lower()
    for frame in (data.train, data.test):
        assert all(re.fullmatch(r"\d{10}_[0-9a-f]{10}\.jpg", i) for i in frame["id"])
        assert all(len(c) == 5 and len(set(c)) == 5 for c in frame["captions"])  # five different paraphrases
        assert all(c.endswith(" .") and c[0].isupper() for caps in frame["captions"] for c in caps)


def test_one_row_holds_an_image_and_all_its_captions(generated):
    """Folds split rows; this schema is what keeps every caption in its image's fold."""
    root, data = generated
    rows = pd.concat([data.train, data.test])
    assert rows["id"].is_unique
    for image, ids in zip(rows["id"], rows["caption_ids"]):
        assert ids == [f"{image}#{k}" for k in range(5)]
    token_images = [line.split("#")[0] for line in (root / "Flickr8k.token.txt").read_text().splitlines()]
    assert sorted(set(token_images)) == sorted(rows["id"])  # no caption elsewhere


def test_twins_differ_from_their_original_and_share_its_split(generated):
    root, data = generated
    scenes = pd.read_csv(root / "truth" / "scenes.csv", dtype=str, keep_default_na=False).set_index("image")
    split = {**dict.fromkeys(data.train["id"], "train"), **dict.fromkeys(data.test["id"], "test")}
    twins = scenes[scenes["twin_of"] != ""]
    assert len(twins) >= 5
    for image, original in twins["twin_of"].items():
        assert split[image] == split[original]
        assert (scenes.loc[image].drop("twin_of") != scenes.loc[original].drop("twin_of")).any()
    assert not scenes.drop(columns="twin_of").duplicated().any()  # no two images share a description


_WORDS = {  # what a caption may call each latent value
    "circle": r"circles?|discs?", "square": r"squares?", "triangle": r"triangles?", "star": r"stars?",
    "diamond": r"diamonds?|rhombus(es)?", "cross": r"cross(es)?|plus signs?", "ring": r"rings?|hoops?",
    "purple": r"purple|violet", "h": r"left|right", "v": r"above|over|below|under|beneath|top|bottom",
}  # fmt: skip


def test_captions_name_colour_shape_count_and_relation(generated):
    root, _ = generated
    scenes = pd.read_csv(root / "truth" / "scenes.csv", dtype=str, keep_default_na=False).set_index("image")
    counts = {"1": r"\b(a|an|one|a single)\b", "2": r"\b(two|a pair of)\b", "3": r"\bthree\b"}
    for line in (root / "Flickr8k.token.txt").read_text().splitlines():
        key, text = line.split("\t")
        scene = scenes.loc[key.split("#")[0]]
        for g in range(1, int(scene["groups"]) + 1):
            for field in ("shape", "colour"):
                value = scene[f"{field}_{g}"]
                assert re.search(rf"\b({_WORDS.get(value, value)})\b", text), (text, field, value)
            assert re.search(counts[scene[f"count_{g}"]], text, re.IGNORECASE), text
        if scene["groups"] == "2":
            assert re.search(_WORDS[scene["axis"]], text), text
            if scene["colour_1"] != scene["colour_2"]:
                _check_direction(text.lower(), scene)


_FORWARD = {"h": r"\bleft of\b", "v": r"\b(above|over)\b"}  # group 1 <forward> group 2
_INVERSE = {"h": r"\bright of\b", "v": r"\b(?<!down )(below|under|beneath)\b"}  # group 2 <inverse> group 1
_FIRST_SIDE = {"h": r"\b(on|to) the left\b(?! of)", "v": r"\b(at the top|up top)\b"}
_SECOND_SIDE = {"h": r"\b(on|to) the right\b(?! of)", "v": r"\b(at the bottom|down below)\b"}


def _check_direction(text, scene):
    """The relation words put group 1 left of / above group 2 (groups told apart by colour)."""
    axis = scene["axis"]
    at = [re.search(rf"\b({_WORDS.get(scene[f'colour_{g}'], scene[f'colour_{g}'])})\b", text).start() for g in (1, 2)]
    between = text[min(at):max(at)]
    if re.search(_FORWARD[axis], between) or re.search(_INVERSE[axis], between):  # "A left of B", "B right of A"
        assert bool(re.search(_FORWARD[axis], between)) == (at[0] < at[1]), text
    else:  # "on the left, A; on the right, B" in either order: the side named last before a group is its own
        for g, side in ((0, _FIRST_SIDE[axis]), (1, _SECOND_SIDE[axis])):
            sides = [(m.start(), pattern) for pattern in (_FIRST_SIDE[axis], _SECOND_SIDE[axis])
                     for m in re.finditer(pattern, text) if m.start() < at[g]]  # fmt: skip
            assert sides and max(sides)[1] == side, text


def test_oracle_fits_own_captions_and_beats_chance(generated):
    root, data = generated
    scores = oracle_scores(root, data.train)  # [32 images, 160 captions]
    owner = np.repeat(np.arange(len(data.train)), 5)
    assert scores.shape == (32, 160)
    assert (scores[owner, np.arange(160)] >= 1).all()  # every caption fits its own image
    assert (scores >= 1).sum() < 2 * 160  # and few others
    t2i_r1 = np.mean(scores.argmax(axis=0) == owner)
    assert t2i_r1 > 0.5  # chance: 1/32


def test_pixels_show_the_named_colours_and_relation(generated):
    from harness.data.images import load_pixels

    root, data = generated
    pixels = load_pixels(data, data.train).astype(float)
    assert pixels.shape == (32, 64, 64, 3)
    scenes = pd.read_csv(root / "truth" / "scenes.csv", dtype=str, keep_default_na=False).set_index("image")
    n_checked = 0
    for image, row in zip(pixels, data.train["id"]):
        scene = scenes.loc[row]
        masks = {}
        for g in range(1, int(scene["groups"]) + 1):
            colour = scene[f"colour_{g}"]
            masks[g] = np.linalg.norm(image - np.array(COLOURS[colour]), axis=-1) < 50
            assert masks[g].sum() >= 8, (row, colour)  # the named colour is drawn
        if scene["groups"] == "2" and scene["colour_1"] != scene["colour_2"]:
            axis = 1 if scene["axis"] == "h" else 0  # x for "left of", y for "above"
            first, second = (np.nonzero(masks[g])[axis].mean() for g in (1, 2))
            assert first < second, (row, scene["axis"])
            n_checked += 1
    assert n_checked >= 5
