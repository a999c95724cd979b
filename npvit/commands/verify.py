"""``npvit verify``: does npvit, with the official weights, give the logits others published?

For every anchor (npvit/data/anchors.json, or ``--anchors FILE``; format in npvit/data/anchors.py)
it loads the weights of the anchor's model, preprocesses the anchor's image with the anchor's
pipeline, runs the model in float32 and compares the published logits. The table shows the
largest |npvit - published| against the anchor's tolerance, the top-5 classes and PASS/FAIL;
the exit code is 0 only if every anchor passes (1 if one fails, 2 for an error).

Segmentation anchors compare the low-resolution logits (the head's output, before any resize)
at flat indices; the table then shows the classes the low-resolution mask covers most. The
published segmentation anchors are the Hugging Face v1 DeepLabv3 ones (converted from the
ml-cvnets v0.1 files, HF's v1 port computes what ml-cvnets computes). HF's MobileViTv2
segmentation anchor is NOT among them: HF's v2 port drops the dilation of the v2 blocks' local
convolution, so its logits come from a different network than the ml-cvnets release npvit
implements (../shared/reference/dense/NOTES.md 4).

Weights: ``--weights FILE`` (one checkpoint; its model is detected), ``--weights DIR`` (a folder
holding the official files under their official names, or npvit's converted <model>.npz), else
the cache (``npvit download``), downloading what is missing. Image: ``--image FILE``, else the
anchor's image from the cache (``<cache>/images/``), downloaded once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data import load_image, preprocess
from ..data.anchors import Anchor, load_anchors
from ..errors import NpvitError
from ..functional import softmax_forward
from ..inference import load_model, predict_logits, top_k
from ..weights import DownloadError, cache_dir, fetch, local_weights, official, pretrained_path
from ..weights.download import check_cache_folder

TOP_K = 5


def run(args) -> int:
    anchors = _select(load_anchors(args.anchors), args.model, args.anchors)
    given_image = load_image(args.image) if args.image else None   # a bad --image fails first
    if given_image is not None and len({a.image_url for a in anchors}) > 1:
        raise NpvitError("--image replaces the anchors' image, but the selected anchors use "
                         "several images; pick one model with --model")

    models = {}         # name -> (model in eval mode, where its weights came from)
    folder_files = {}   # --weights DIR: name -> file
    if args.weights and Path(args.weights).is_dir():
        folder_files = _files_in_folder(Path(args.weights), {a.model for a in anchors})
    elif args.weights:
        explicit = args.model if args.model != "all" else None
        model, source = load_model(explicit, weights=args.weights)   # checked against the model
        anchors = _anchors_for_weights(anchors, model.name, args)
        models[model.name] = (model, source)

    _download_missing(anchors, given_image is not None, weights_needed=not args.weights, args=args)
    images = {}   # image_url -> RGB PIL image
    for anchor in anchors:
        if anchor.image_url not in images:
            images[anchor.image_url] = (given_image if given_image is not None
                                        else load_image(_cached_image(anchor)))
    for name in dict.fromkeys(a.model for a in anchors):
        if name in folder_files:
            models[name] = load_model(name, weights=folder_files[name])
        elif name not in models:
            pretrained_path(name)          # the cached official file -> .npz, once, offline
            models[name] = load_model(name)

    results = []
    logits_memo = {}   # one forward per (model, image, preprocessing)
    for anchor in anchors:
        key = (anchor.model, anchor.image_url, anchor.preprocess, anchor.crop_size, anchor.resize_size)
        if key not in logits_memo:
            x = preprocess(images[anchor.image_url], anchor.preprocess, anchor.crop_size,
                           anchor.resize_size)[None]                        # (1, 3, S, S) float32
            logits_memo[key] = predict_logits(models[anchor.model][0], x)[0]  # (1000,) / (C, h, w)
        results.append(_compare(anchor, logits_memo[key]))

    image_label = args.image or _cached_image(anchors[0])
    _print_report(results, {name: source for name, (_, source) in models.items()}, image_label,
                  args.anchors)
    return 0 if all(r["passed"] for r in results) else 1


def _select(anchors: list[Anchor], model: str, source) -> list[Anchor]:
    if model == "all":
        return anchors
    chosen = [a for a in anchors if a.model == model]
    if not chosen:
        anchored = ", ".join(dict.fromkeys(a.model for a in anchors))
        raise NpvitError(f"{source or 'the published anchors'} have no anchor for {model!r}; "
                         f"anchored models: {anchored}")
    return chosen


def _anchors_for_weights(anchors: list[Anchor], model: str, args) -> list[Anchor]:
    """The anchors of the model whose weights --weights FILE holds."""
    chosen = [a for a in anchors if a.model == model]
    if not chosen:
        anchored = ", ".join(dict.fromkeys(a.model for a in anchors))
        raise NpvitError(f"{args.weights} holds {model} weights, but "
                         f"{args.anchors or 'the published anchors'} anchor only {anchored}; "
                         f"pass the weights of one of those models")
    return chosen


def _files_in_folder(folder: Path, models) -> dict[str, Path]:
    """Each model's weights in ``folder``: <model>.npz, else the official file name."""
    found, missing = {}, []
    for model in sorted(models):
        path = local_weights(model, folder)
        if path is None:
            missing.append(official(model))
        else:
            found[model] = path
    if missing:
        raise NpvitError(f"{folder} lacks " + "; ".join(
            f"{e.file_name} (the {e.name} weights: fetch {e.url})" for e in missing))
    return found


def _cached_image(anchor: Anchor) -> Path:
    return cache_dir() / "images" / anchor.image_name


def _download_missing(anchors: list[Anchor], have_image: bool, weights_needed: bool, args) -> None:
    """Fetch into the cache every image and official file that is not there yet (progress bars
    on stderr). Without network: ONE line listing everything to fetch and where to put it."""
    missing = []   # (url, destination)
    if not have_image:
        for anchor in {a.image_url: a for a in anchors}.values():
            if not _cached_image(anchor).is_file():
                missing.append((anchor.image_url, _cached_image(anchor)))
    if weights_needed:
        for model in dict.fromkeys(a.model for a in anchors):
            if local_weights(model) is None:
                missing.append((official(model).url, cache_dir() / official(model).file_name))
    for folder in {dest.parent for _, dest in missing}:
        check_cache_folder(folder)   # a file or a read-only folder is not a network problem
    for i, (url, dest) in enumerate(missing):
        try:
            fetch(url, dest)
        except DownloadError as e:
            raise NpvitError(f"cannot download {url} ({e}). "
                             f"{_offline_advice(missing[i:], args)}") from None


def _offline_advice(missing, args) -> str:
    """What to fetch by hand, where to put it, and how to run again, in one sentence."""
    by_folder: dict[Path, list[str]] = {}
    for url, dest in missing:
        by_folder.setdefault(dest.parent, []).append(url)
    where = " and ".join(f"{' '.join(urls)} into {folder}/" for folder, urls in by_folder.items())
    again = "npvit verify" + "".join(f" --{name} {value}" for name, value in
                                     (("model", args.model), ("anchors", args.anchors),
                                      ("weights", args.weights), ("image", args.image))
                                     if value and value != "all")
    return (f"Without network, fetch {where} (in that folder `curl -L -O URL` keeps each file's "
            f"name), then run `{again}` again; or pass files you have with --weights FILE|DIR "
            f"and --image FILE")


def _compare(anchor: Anchor, logits: np.ndarray) -> dict:
    if max(anchor.logit_indices) >= logits.size:
        raise NpvitError(f"the anchor of {anchor.model} names logit index {max(anchor.logit_indices)}, "
                         f"but its logits {logits.shape} have {logits.size}")
    got = logits.reshape(-1)[list(anchor.logit_indices)].astype(np.float64)
    delta = float(np.abs(got - np.array(anchor.values)).max())
    if logits.ndim == 3:              # segmentation (C, h, w): the classes of the low-res mask
        from ..models.segmentation import RELEASES
        from ..data import segmentation_classes
        classes = segmentation_classes(RELEASES[anchor.model].dataset)
        counts = np.bincount(logits.argmax(axis=0).reshape(-1), minlength=len(classes))
        top = ", ".join(f"{classes[i].name} {counts[i] / counts.sum():.0%}"
                        for i in np.argsort(-counts, kind="stable")[:3] if counts[i])
    else:
        probabilities, _ = softmax_forward(logits.astype(np.float64))
        top = ", ".join(f"{p.label} {p.prob:.1%}" for p in top_k(probabilities, TOP_K))
    return {"anchor": anchor, "got": got, "delta": delta, "passed": delta <= anchor.tolerance,
            "top": top}


def _print_report(results: list[dict], sources: dict, image, anchors_file) -> None:
    print(f"anchors: {anchors_file or 'published (npvit/data/anchors.json)'}; image: {image}; "
          f"float32")
    header = ("model", "max|diff|", "tolerance", f"top-{TOP_K}", "result")
    rows = [(r["anchor"].model, f"{r['delta']:.1e}", f"{r['anchor'].tolerance:.1e}", r["top"],
             "PASS" if r["passed"] else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in results:
        a = r["anchor"]
        print(f"\n{a.model}: {sources[a.model]}; preprocessing {a.preprocess}; "
              f"logits[{', '.join(map(str, a.logit_indices))}]")
        print("    npvit     " + "".join(f"{v:>11.6f}" for v in r["got"]))
        print("    published " + "".join(f"{v:>11g}" for v in a.values))
        for place in a.published_in:
            print(f"    published in {place}")
    failed = sum(not r["passed"] for r in results)
    print(f"\n{len(results) - failed} of {len(results)} anchors reproduced"
          + (f"; {failed} FAILED" if failed else ""))


def add_parser(sub):
    p = sub.add_parser("verify", help="check npvit against logits published for the official weights",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all", metavar="NAME|all",
                   help="verify only this model's anchors (default: all)")
    p.add_argument("--weights", metavar="PATH",
                   help="a checkpoint file, or a folder holding the official files")
    p.add_argument("--image", metavar="PATH", help="the anchor image, if you fetched it yourself")
    p.add_argument("--anchors", metavar="FILE.json",
                   help="anchors to check (default: the published ones shipped with npvit)")
    p.set_defaults(func=run)
