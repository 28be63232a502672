"""Tiny models and small datasets written in their published layouts, for the evaluation tests."""
import json
import os
import pickle

import numpy as np
import torch
from PIL import Image

IMAGE = 32
NAMES = ["cat", "dog", "car", "tree", "boat", "house"]


def tiny_open_clip():
    """A random tiny open_clip CLIP (the reference both sides of an agreement test see)."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                       image_size=IMAGE),
                 text_cfg=CLIPTextCfg(context_length=16, width=32, heads=2, layers=1)).eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    return model, tokenizer


def transform():
    from torchvision import transforms as T
    return T.Compose([T.Resize(IMAGE), T.CenterCrop(IMAGE), T.ToTensor(),
                      T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def tiny_encoders(model, tokenizer):
    from clipforge.evaluation.benchmark import make_encoders
    return make_encoders(model, tokenizer, transform(), "tiny-open-clip", image_size=IMAGE)


def _pattern(label: int, index: int, size: int = IMAGE) -> np.ndarray:
    """A class-dependent colour pattern with per-sample noise, so a model can tell classes apart."""
    rng = np.random.default_rng(1000 * label + index)
    base = np.zeros((size, size, 3), np.float32)
    base[..., label % 3] = 80 + 25 * label
    base[: size // 2 * (1 + label % 2), :, (label + 1) % 3] += 60
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_cifar(root, n_per_class=3, num_classes=10, split="test"):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    images, labels = [], []
    for label in range(num_classes):
        for i in range(n_per_class):
            images.append(_pattern(label, i).transpose(2, 0, 1).reshape(-1))  # (3*32*32,) planar, as CIFAR
            labels.append(label)
    name = "test_batch" if split == "test" else "data_batch_1"
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump({"data": np.stack(images), "labels": labels}, f)
    if split == "train":
        for i in range(2, 6):
            with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
                pickle.dump({"data": np.zeros((0, 3072), np.uint8), "labels": []}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"][:num_classes]}, f)
    return root


def make_imagefolder(root, classes=NAMES, n_per_class=3, split="test", classnames=None, broken=0):
    for label, name in enumerate(classes):
        folder = os.path.join(root, split, name.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(_pattern(label, i)).save(os.path.join(folder, f"{i}.png"))
    for i in range(broken):
        with open(os.path.join(root, split, classes[0].replace(" ", "_"), f"broken{i}.jpg"), "wb") as f:
            f.write(b"not an image at all")
    if classnames is not None:
        with open(os.path.join(root, "classnames.txt"), "w") as f:
            f.write("\n".join(classnames) + "\n")
    return root


VOC_OBJECTS = {"000001": ["dog", "person"], "000002": ["car"], "000003": ["cat", "cat", "sofa"],
               "000004": ["bird"], "000005": ["person", "horse"]}


def make_voc(root, objects=VOC_OBJECTS, split="test"):
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    with open(os.path.join(base, "ImageSets", "Main", f"aeroplane_{split}.txt"), "w") as f:
        f.write("".join(f"{image_id} -1\n" for image_id in objects))
    for k, (image_id, names) in enumerate(objects.items()):
        Image.fromarray(_pattern(k, 0, 64)).save(os.path.join(base, "JPEGImages", image_id + ".jpg"))
        boxes = "".join(f"<object><name>{n}</name><bndbox><xmin>{4 + j}</xmin><ymin>4</ymin><xmax>40</xmax>"
                        f"<ymax>{30 + j}</ymax></bndbox></object>" for j, n in enumerate(names))
        with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename>{boxes}</annotation>")
    return root


def make_captions(root, n_images=8, captions_per_image=3, name="flickr8k", split="test", broken=0):
    os.makedirs(root, exist_ok=True)
    lines = ["image,caption"]
    for i in range(n_images):
        Image.fromarray(_pattern(i % 6, i)).save(os.path.join(root, f"img{i}.jpg"))
        lines += [f"img{i}.jpg,a photo number {i}, version {c}" for c in range(captions_per_image)]
    for i in range(broken):
        with open(os.path.join(root, f"bad{i}.jpg"), "wb") as f:
            f.write(b"\x00garbage")
        lines.append(f"bad{i}.jpg,a broken picture")
    with open(os.path.join(root, f"{name}_{split}_karpathy.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def make_coco(root, n_images=4, split="test"):
    images_dir = os.path.join(root, "val2014")
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        Image.fromarray(_pattern(i, i)).save(os.path.join(images_dir, f"COCO_{i}.jpg"))
        images.append({"id": 100 + i, "file_name": f"COCO_{i}.jpg"})
        annotations += [{"image_id": 100 + i, "id": 10 * i + c, "caption": f"coco picture {i} take {c}"}
                        for c in range(5)]
    with open(os.path.join(root, f"coco_{split}_karpathy.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return root


def _scalar_float(x=0.0):
    import builtins
    try:
        return builtins.float(x)
    except TypeError:  # a 1-element array: NumPy 2.x no longer converts it implicitly
        return builtins.float(np.asarray(x).reshape(-1)[0])


def patch_clip_benchmark_float(monkeypatch):
    """clip_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which the installed NumPy rejects.

    Shadow ``float`` inside that module only, leaving its metric logic untouched.
    """
    from clip_benchmark.metrics import zeroshot_classification as zc
    monkeypatch.setattr(zc, "float", _scalar_float, raising=False)
