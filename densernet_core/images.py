"""Turning user images (paths, arrays, PIL) into the tensor a backbone expects.

Colour order is explicit everywhere: arrays are RGB unless the caller says BGR, and the
checkpoint, not the user, decides the normalisation its weights were trained with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

# Caffe VGG16: BGR, 0-255, minus the ImageNet mean in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision: RGB, 0-1, minus mean, divided by std.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
COLOR_ORDERS = ("rgb", "bgr")

ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image


class ImageError(ValueError):
    """An image could not be read or has a shape/type we cannot interpret."""


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 array from a file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageError(f"cannot decode image {path} (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_rgb_uint8(image: ImageLike, color: str = "rgb") -> np.ndarray:
    """Any supported image as an HxWx3 RGB uint8 array."""
    if color not in COLOR_ORDERS:
        raise ImageError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
    if isinstance(image, (str, Path)):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - PIL ships with torchvision
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, a numpy array or a PIL image")
    arr = image
    if arr.size == 0:
        raise ImageError(f"empty image (shape {arr.shape})")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16 or float")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"unsupported image shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    return np.ascontiguousarray(arr[:, :, ::-1] if color == "bgr" else arr)


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width); area interpolation when shrinking avoids aliasing."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    shrink = rgb.shape[0] > h or rgb.shape[1] > w
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalise(batch_rgb: np.ndarray, preprocessing: str) -> torch.Tensor:
    """NxHxWx3 RGB uint8 -> Nx3xHxW float tensor in the weights' expected space."""
    x = torch.from_numpy(np.ascontiguousarray(batch_rgb)).permute(0, 3, 1, 2).float()
    if preprocessing == "caffe":
        x = x.flip(1)  # RGB -> BGR
        mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
        return x - mean
    if preprocessing == "torchvision":
        mean = torch.tensor(TORCHVISION_MEAN_RGB).view(1, 3, 1, 1)
        std = torch.tensor(TORCHVISION_STD_RGB).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std
    raise ImageError(f"unknown preprocessing {preprocessing!r}")


def prepare_batch(images: Sequence[ImageLike], size: tuple[int, int], preprocessing: str,
                  color: str = "rgb") -> torch.Tensor:
    return normalise(np.stack([resize(to_rgb_uint8(im, color), size) for im in images]), preprocessing)


def as_image_list(images: Sequence[ImageLike] | ImageLike) -> Sequence[ImageLike]:
    """One image (a path, an array, a PIL image) or a sequence of them, as a sequence."""
    if isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, Sequence):
        return [images]
    return images


def prepared_batches(images: Sequence[ImageLike], size: tuple[int, int], preprocessing: str, color: str = "rgb",
                     batch_size: int = 8, progress: bool = False) -> Iterator[torch.Tensor]:
    """The network's input tensors, `batch_size` images at a time: what every backend's describe() runs on."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="describe", unit="batch"):
        yield prepare_batch(images[start:start + batch_size], size, preprocessing, color)


def list_images(items: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given."""
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"}
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in exts))
        elif p.is_file():
            out.append(p)
        else:
            raise ImageError(f"no such image or folder: {p}")
    return out


# ---- raw camera messages (sensor_msgs/Image fields, from rclpy or rosbags alike) -------------------------------
# encoding -> (channels, bytes per channel)
RAW_ENCODINGS = {"rgb8": (3, 1), "bgr8": (3, 1), "mono8": (1, 1), "rgba8": (4, 1), "bgra8": (4, 1),
                 "mono16": (1, 2), "16UC1": (1, 2), "8UC1": (1, 1), "8UC3": (3, 1),
                 "yuv422": (2, 1), "yuv422_yuy2": (2, 1),
                 **{f"bayer_{p}{bits}": (1, bits // 8) for p in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)}}
# What cameras send without a debayer or colour conversion in between (image_proc, a driver's own option):
# packed 4:2:2 YUV (usb_cam's yuyv pixel format: yuv422_yuy2, YUYV; yuv422 is UYVY) and Bayer mosaics
# (machine-vision drivers), converted as cv_bridge does. The Bayer codes are cv_bridge's too: OpenCV names a
# pattern by the second row's second and third pixels, ROS by the first 2x2 block read row by row.
YUV422_TO_RGB = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV}
BAYER_TO_BGR = {"rggb": cv2.COLOR_BayerBG2BGR, "bggr": cv2.COLOR_BayerRG2BGR, "gbrg": cv2.COLOR_BayerGR2BGR,
                "grbg": cv2.COLOR_BayerGB2BGR}


def check_raw_image(msg) -> None:
    """Refuse, by name, an Image whose encoding, size, step or data cannot be read."""
    if msg.encoding not in RAW_ENCODINGS:
        raise ImageError(f"unsupported encoding {msg.encoding!r}; supported: {sorted(RAW_ENCODINGS)}")
    if msg.width == 0 or msg.height == 0:
        raise ImageError(f"empty image ({msg.width}x{msg.height})")
    channels, size = RAW_ENCODINGS[msg.encoding]
    if msg.step < msg.width * channels * size:
        raise ImageError(f"step {msg.step} too small for {msg.width} px of {msg.encoding}")
    if len(msg.data) < msg.step * msg.height:
        raise ImageError(f"truncated image data: {len(msg.data)} bytes, {msg.step * msg.height} expected "
                         f"for {msg.width}x{msg.height} {msg.encoding}")


def raw_image_array(msg) -> np.ndarray:
    """The pixels as H x W (x C) uint8/uint16: rows `step` bytes apart (drivers pad rows for alignment),
    16-bit samples in the message's byte order (`is_bigendian`)."""
    check_raw_image(msg)
    channels, size = RAW_ENCODINGS[msg.encoding]
    row = msg.width * channels * size
    data = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    buf = np.asarray(data, dtype=np.uint8).reshape(-1)[:msg.step * msg.height]
    rows = np.ascontiguousarray(buf.reshape(msg.height, msg.step)[:, :row])
    if size == 2:
        rows = rows.view(np.dtype(">u2" if msg.is_bigendian else "<u2")).astype(np.uint16)
    return rows.reshape((msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels))


BGR_ENCODINGS = ("bgr8", "bgra8", "8UC3")  # OpenCV's channel order


def raw_to_rgb(img: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded raw image as RGB uint8 (16-bit: the high byte; grey: replicated; alpha dropped; YUV 4:2:2
    converted; Bayer demosaiced)."""
    if encoding in YUV422_TO_RGB:
        if img.shape[1] % 2:
            raise ImageError(f"{encoding} needs an even width (two pixels share one U and V), got {img.shape[1]}")
        return cv2.cvtColor(np.ascontiguousarray(img), YUV422_TO_RGB[encoding])
    if encoding.startswith("bayer_"):
        if min(img.shape[:2]) < 2:
            raise ImageError(f"{encoding} needs at least 2x2 pixels (one Bayer block), got {img.shape[1]}x{img.shape[0]}")
        return to_rgb_uint8(cv2.cvtColor(np.ascontiguousarray(img), BAYER_TO_BGR[encoding[6:10]]), "bgr")
    return to_rgb_uint8(img, "bgr" if encoding in BGR_ENCODINGS else "rgb")


def message_to_rgb(msg) -> np.ndarray:
    """A raw Image message (any library's) as RGB uint8."""
    return raw_to_rgb(raw_image_array(msg), msg.encoding)
