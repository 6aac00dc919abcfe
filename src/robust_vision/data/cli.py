"""``robust-vision-data``: prepare a dataset once into uint8 ``.npy`` shards read by memory map.

    robust-vision-data prepare --config FILE --output DIR [--override data.image_size=[32,32]] [--workers N]
    robust-vision-data describe --config FILE        # where each split comes from, and its size

``prepare`` decodes every split of the config's ``data`` section (resized to ``data.image_size``,
converted to ``data.channels``, with the config's hold-outs) and writes

    DIR/meta.json              class names, image shape, where each split came from
    DIR/<split>/images.npy     uint8 (N, H, W, C)
    DIR/<split>/labels.npy     int32 (N,)

Train or evaluate from it with ``data.dataset_name: prepared`` and ``data.data_dir: DIR``
(splits are then fixed; no further hold-out). ``.npy`` memory maps were chosen over ArrayRecord
because a batch is one contiguous read with no per-record decoding (benchmarks/data_pipeline.py
measures both paths). The output is written to ``DIR.partial`` and renamed when complete, so a
failure (a corrupt image, a missing split) leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from robust_vision.data.readers import SPLIT_NAMES, DatasetError
from robust_vision.data.sources import RecordSource, describe_splits, open_splits
from robust_vision.io import write_json


def prepare(data_cfg, output: Path, *, workers: int = 0, batch_size: int = 256,
            log=print, splits: Sequence[str] = SPLIT_NAMES) -> dict:
    """Pack the ``splits`` (default train / val / test) of ``data_cfg`` into ``output`` (see the
    module doc); a training-only source (a train.zip) packs ``("train", "val")``.

    Returns the meta dict written to ``output/meta.json``. Raises DatasetError for bad input and
    FileExistsError when ``output`` exists (nothing is overwritten)."""
    from robust_vision.data.pipeline import eval_batches

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"--output: '{output}' already exists; choose a new directory (nothing was overwritten)")
    sources = open_splits(data_cfg, splits)
    for line in describe_splits(sources):
        log(line)
    size = None if data_cfg.image_size is None else (int(data_cfg.image_size[0]), int(data_cfg.image_size[1]))
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    meta: dict = {"format": "robust-vision-prepared-v1", "dataset_name": data_cfg.dataset_name,
                  "data_dir": str(data_cfg.data_dir), "class_names": list(next(iter(sources.values())).info.class_names),
                  "splits": {}}
    try:
        for split, src in sources.items():
            t0 = time.perf_counter()
            (partial / split).mkdir(parents=True)
            images = None
            for b, batch in enumerate(_batches(src, batch_size, workers, size, data_cfg.channels, eval_batches)):
                n_real = int(batch.mask.sum())
                if images is None:
                    images = np.lib.format.open_memmap(partial / split / "images.npy", mode="w+", dtype=np.uint8,
                                                       shape=(len(src),) + batch.images.shape[1:])
                    meta["image_shape"] = list(batch.images.shape[1:])
                elif list(batch.images.shape[1:]) != meta["image_shape"]:
                    raise DatasetError(f"prepare: {split} images have shape {batch.images.shape[1:]}, others "
                                       f"{tuple(meta['image_shape'])}; set data.image_size (and data.channels)")
                images[b * batch_size: b * batch_size + n_real] = _as_uint8(batch.images[:n_real])
            if images is not None:
                images.flush()
                del images
            np.save(partial / split / "labels.npy", src.labels.astype(np.int32))
            meta["splits"][split] = {"count": len(src), "from": src.info.description}
            log(f"  wrote {split}: {len(src)} images in {time.perf_counter() - t0:.1f} s")
        write_json(partial / "meta.json", meta)
        partial.rename(output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _as_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)  # float sources (digits): quantise


def _batches(src: RecordSource, batch_size: int, workers: int, size, channels, eval_batches):
    try:
        yield from eval_batches(src, batch_size, shard_index=0, shard_count=1, workers=workers,
                                threads=1 if workers else 2, image_size=size, channels=channels)
    except ValueError as exc:
        if isinstance(exc, DatasetError):
            raise
        # np.stack of images of different sizes
        raise DatasetError(f"prepare: images of {src.info.description} have different sizes ({exc}); set "
                           "data.image_size to resize them to one size") from None


def _describe(data_cfg) -> list[str]:
    """One line per split in plain words. A source without a test split (a zip holding only
    ``train/``) trains as well as any: its test line says so instead of refusing the source."""
    try:
        return describe_splits(open_splits(data_cfg, SPLIT_NAMES))
    except DatasetError:
        sources = open_splits(data_cfg, ("train", "val"))  # what training opens; its own error if this fails too
    return [*describe_splits(sources), f"  test  {'none':>8s}         this source has no test split (training uses "
                                       "train and val only); evaluate with robust-vision-eval --data SOURCE"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from robust_vision.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="robust-vision-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("prepare", "pack a dataset into uint8 .npy shards"),
                            ("describe", "print where each split comes from and its size")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="YAML config whose data section names the source")
        p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="set a config key")
        if name == "prepare":
            p.add_argument("--output", required=True, help="new directory to write")
            p.add_argument("--workers", type=int, default=0, help="decoding worker processes (0 = threads only)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        if args.command == "prepare":
            from robust_vision.io import check_output_dir

            if Path(args.output).exists():
                raise FileExistsError(f"--output: '{args.output}' already exists; choose a new directory "
                                      "(nothing was overwritten)")
            check_output_dir(args.output)  # a read-only place fails before any decoding
        if args.command == "describe":
            for line in _describe(cfg.data):
                print(line)
            return 0
        prepare(cfg.data, Path(args.output), workers=args.workers)
        print(f"prepared {args.output}; use data.dataset_name: prepared, data.data_dir: {args.output}")
        return 0
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:  # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk filled up, or the output became unwritable, while writing
        print(f"error: prepare: cannot write {getattr(exc, 'filename', None) or args.output} "
              f"({exc.strerror or exc}); free space or choose a writable --output (nothing was kept)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written (the partial output was removed)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
