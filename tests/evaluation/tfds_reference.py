"""TensorFlow's side of the TFDS-layout tests, run in a subprocess so TensorFlow never loads into the test workers.

``python tfds_reference.py make ROOT``: TFDS itself writes the two fixtures in its data dir under ROOT, with the
builder names, versions and features of the published sets (caltech_birds2011 0.1.1: PNG images, a class count
only; i_naturalist2017 0.1.0: JPEG files, the 5,089 species names as a names file), several shards each.

``python tfds_reference.py read ROOT OUT NAME:SPLIT ...``: clip_benchmark 1.6.2's ``build_dataset(NAME)`` (its VTAB
loader: task_adaptation + TFDS) reads each split; OUT gets the images as arrays, labels, classes and templates.

``python tfds_reference.py records PATH``: TensorFlow writes ``RECORDS`` as tf.train.Example records.
"""
import os
import pickle
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

# more than 16 records in some shards (three per split): TFDS interleaves shard files 16 records at a time
COUNTS = {"caltech_birds2011": {"train": 60, "test": 50}, "i_naturalist2017": {"train": 30, "validation": 52}}


def _pattern(rng, label: int, height: int, width: int) -> np.ndarray:
    """A label-dependent colour with noise, so a tiny model's predictions depend on the label."""
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.int16)
    noise = rng.integers(-40, 40, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make(root: str) -> None:
    import tensorflow_datasets as tfds
    from PIL import Image

    class CaltechBirds2011(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "caltech_birds2011"
        VERSION = tfds.core.Version("0.1.1")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"), features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(), "image/filename": tfds.features.Text(),
                "label": tfds.features.ClassLabel(num_classes=200), "label_name": tfds.features.Text(),
                "bbox": tfds.features.BBoxFeature(),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1))}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, n) for split, n in COUNTS[self.name].items()}

        def _generate_examples(self, split, count):
            rng = np.random.default_rng(len(split))
            for i in range(count):
                label = int(rng.integers(0, 6)) * 31
                height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                yield f"{split}{i}", {
                    "image": _pattern(rng, label, height, width), "image/filename": f"{label:03d}/{i}.jpg",
                    "label": label, "label_name": f"{label + 1:03d}.Bird_{label}",
                    "bbox": tfds.features.BBox(0.1, 0.2, 0.7, 0.9),
                    "segmentation_mask": np.zeros((height, width, 1), np.uint8)}

    names_file = os.path.join(os.path.dirname(tfds.__file__), "image_classification", "inaturalist_labels.txt")

    class INaturalist2017(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "i_naturalist2017"
        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"), features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "image": tfds.features.Image(),
                "label": tfds.features.ClassLabel(names_file=names_file),
                "supercategory": tfds.features.ClassLabel(names=["Plantae", "Aves", "Insecta"])}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, n) for split, n in COUNTS[self.name].items()}

        def _generate_examples(self, split, count):
            rng = np.random.default_rng(10 + len(split))
            folder = os.path.join(root, "jpegs", split)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                label = int(rng.integers(0, 5)) * 1000 + 7
                path = os.path.join(folder, f"{i}.jpg")
                image = Image.fromarray(_pattern(rng, label, int(rng.integers(24, 64)), int(rng.integers(24, 64))))
                (image.convert("L") if i % 5 == 4 else image).save(path, quality=90)  # some grey JPEGs too
                yield f"{split}{i}", {"id": f"{split}{i}", "image": path, "label": label,
                                      "supercategory": i % 3}

    config = tfds.download.DownloadConfig(num_shards=3, try_download_gcs=False)
    for builder in (CaltechBirds2011, INaturalist2017):
        builder(data_dir=root).download_and_prepare(download_config=config)


def read(root: str, out: str, *requests: str) -> None:
    """Each request ``NAME:SPLIT`` read by clip_benchmark; OUT holds ``{request: images, labels, ...}``."""
    from clip_benchmark.datasets.builder import build_dataset
    result = {}
    for request in requests:
        name, split = request.rsplit(":", 1)
        dataset = build_dataset(name, root=root, transform=None, split=split, download=False)
        items = [(np.asarray(image), int(label)) for image, label in dataset]
        result[request] = {"images": [i for i, _ in items], "labels": [label for _, label in items],
                           "length": len(dataset), "classes": list(dataset.classes),
                           "templates": list(dataset.templates)}
    with open(out, "wb") as f:
        pickle.dump(result, f)


RECORDS = [  # features of every kind tf.train.Example has, written by TensorFlow itself
    {"bytes": [b"", b"\x00\xffabc", "é".encode()], "floats": [0.5, -1.25, 3.0e38], "ints": [0, -1, 2**63 - 1, -2**63]},
    {"bytes": [], "floats": [], "ints": [300, 5]},
    {"ints": [1], "big/name": [b"x" * 70000]},
]


def records(path: str) -> None:
    import tensorflow as tf

    def feature(values):
        if values and isinstance(values[0], bytes) or not values:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    with tf.io.TFRecordWriter(path) as writer:
        for record in RECORDS:
            example = tf.train.Example(features=tf.train.Features(
                feature={name: feature(values) for name, values in record.items()}))
            writer.write(example.SerializeToString())


if __name__ == "__main__":
    {"make": make, "read": read, "records": records}[sys.argv[1]](*sys.argv[2:])
