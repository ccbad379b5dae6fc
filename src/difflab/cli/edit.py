"""``difflab edit inpaint|img2img|invert|interpolate|upscale``: edit images with a trained run
(:mod:`difflab.edit`); ``upscale`` needs a run trained for it (``--cond lowres``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from difflab.cli.args import AUTOENCODER_HELP, RUN_HELP, non_negative_float, positive_int, with_default
from difflab.cli.noise_file import read_noise, settings_path


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"strength must lie in [0, 1] (0 = the input unchanged, 1 = ignore "
                                         f"it), got {text}")
    return value


def _common(p: argparse.ArgumentParser, guidance_default: str) -> None:
    p.add_argument("run", type=Path, help=RUN_HELP)
    p.add_argument("--class", dest="classes",
                   help="class-conditional runs: edit towards this class (a number or name)")
    p.add_argument("--prompt", help="text-conditional runs: edit towards this prompt")
    p.add_argument("--guidance", type=non_negative_float,
                   help="classifier-free guidance scale w with --class/--prompt "
                   f"(default: {guidance_default})")
    p.add_argument("--seed", type=int, default=0, help=with_default("variation i uses seed + i", 0))
    p.add_argument("--weights", choices=("last", "best"), help="the run's last or best weights")
    p.add_argument("--device", default="auto", help=with_default("auto | cpu | cuda | cuda:N", "auto"))
    p.add_argument("--autoencoder", help=AUTOENCODER_HELP)


def _load(args: argparse.Namespace) -> Any:
    from difflab.pipeline import load

    return load(args.run, args.device, args.weights, autoencoder=args.autoencoder)


def _condition(pipe: Any, args: argparse.Namespace, n: int, default_guidance: float | None) -> dict[str, Any]:
    """``--class`` / ``--prompt`` / ``--guidance`` as keyword arguments of the edit functions."""
    from difflab.conditioning import parse_classes

    out: dict[str, Any] = {}
    if args.classes is not None:
        if pipe.is_text:
            raise ValueError(f"--class is for class-conditional runs; {args.run} is conditioned on text: "
                             "use --prompt")
        classes = parse_classes(args.classes, pipe.num_classes, pipe.class_names)
        if len(classes) != 1:
            raise ValueError("give one class to edit towards (e.g. --class 8)")
        out["class_labels"] = classes * n
    if args.prompt is not None:
        if not pipe.is_text:
            raise ValueError(f"--prompt needs a run trained with text (--cond text); {args.run} was trained "
                             f"with --cond {pipe.config.cond}")
        out["prompts"] = args.prompt
    if args.guidance is not None:
        if not out:
            raise ValueError("--guidance needs a condition to guide towards: give --class or --prompt")
        out["guidance"] = args.guidance
    elif out and default_guidance is not None:
        out["guidance"] = default_guidance
    return out


def _write(images: Any, out: Path, nrow: int | None = None) -> None:
    from difflab.viz import save_grid

    if images.shape[0] == 1:
        save_grid(images, out, padding=0)
    else:
        save_grid(images, out, nrow=nrow)
    print(f"wrote {out}")


def cmd_inpaint(args: argparse.Namespace) -> None:
    from difflab.edit import inpaint_run, read_image, read_mask

    pipe = _load(args)
    image = read_image(args.image, pipe.image_shape)
    mask = read_mask(args.mask, pipe.image_shape[1:])
    kwargs = _condition(pipe, args, args.n, None)
    regen = int(mask.sum())
    print(f"inpaint ({args.method}): regenerating {regen} of {mask.numel()} pixels, {args.steps} steps"
          + (f", jump length {args.jump_length}, {args.jump_n_sample} samples per jump"
             if args.method == "repaint" else ""))
    out = inpaint_run(pipe, image, mask, n=args.n, seed=args.seed, method=args.method, steps=args.steps,
                      sampler=args.sampler, eta=args.eta or 0.0, jump_length=args.jump_length,
                      jump_n_sample=args.jump_n_sample, feather=args.feather, **kwargs)
    _write(out, args.out)


def cmd_img2img(args: argparse.Namespace) -> None:
    from difflab.cli.sample import sample_kwargs
    from difflab.edit import img2img_run, read_image

    kwargs = sample_kwargs(args)
    pipe = _load(args)
    image = read_image(args.image, pipe.image_shape)
    kwargs.update(_condition(pipe, args, args.n, None))
    kwargs.pop("seed")
    out, plan = img2img_run(pipe, image, args.strength, n=args.n, seed=args.seed, **kwargs)
    print(plan.describe())
    _write(out, args.out)


def cmd_invert(args: argparse.Namespace) -> None:
    import numpy as np

    from difflab.edit import invert_run, read_image

    pipe = _load(args)
    image = read_image(args.image, pipe.image_shape)
    kwargs = _condition(pipe, args, 1, 1.0)
    inv = invert_run(pipe, image, steps=args.steps, method=args.method, iterations=args.iterations, **kwargs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, inv.noise.numpy())
    settings_path(args.out).write_text(json.dumps(inv.settings, indent=2) + "\n")
    what = "plain DDIM" if args.method == "ddim" else f"fixed-point ({args.iterations} iterations per step)"
    print(f"inverted {args.image} with {what} inversion, {args.steps} steps, {inv.nfe} network evaluations")
    print(f"reconstruction (DDIM, {args.steps} steps, eta 0): RMSE {inv.rmse(image):.4f} on [-1, 1], "
          f"largest pixel error {inv.max_levels(image)} of 255 grey levels")
    print(f"wrote {args.out} and {settings_path(args.out)} "
          f"(difflab sample {args.run} --from-noise {args.out} reconstructs it)")
    if args.reconstruction is not None:
        _write(inv.reconstruction, args.reconstruction)


def _noise_of(pipe: Any, args: argparse.Namespace, which: int) -> Any:
    """The start of endpoint ``which``: a seed's draw, a saved noise, or an inverted image."""
    import torch

    from difflab.edit import invert_run, read_image

    if args.images:
        image = read_image(args.images[which], pipe.image_shape)
        inv = invert_run(pipe, image, steps=args.steps, method=args.method, iterations=args.iterations,
                         **_condition(pipe, args, 1, 1.0))
        print(f"inverted {args.images[which]}: reconstruction RMSE {inv.rmse(image):.4f}")
        return inv.noise[0]
    if args.noise:
        return read_noise(pipe, args.noise[which])[0]
    return torch.randn(pipe.sample_shape, generator=torch.Generator().manual_seed(args.seeds[which]))


def cmd_interpolate(args: argparse.Namespace) -> None:
    from difflab.edit import interpolate_run
    from difflab.viz import save_gif, save_grid

    given = [a for a in (args.seeds, args.noise, args.images) if a]
    if len(given) > 1:
        raise ValueError("give the two endpoints one way: --seeds A B, --noise A.npy B.npy or "
                         "--images A.png B.png")
    if args.frames < 2:
        raise ValueError(f"--frames must be at least 2, got {args.frames}")
    if not given:
        args.seeds = [args.seed, args.seed + 1]
    pipe = _load(args)
    z0, z1 = _noise_of(pipe, args, 0), _noise_of(pipe, args, 1)
    seeds = args.seeds or [args.seed, args.seed]
    kwargs = _condition(pipe, args, args.frames, 1.0 if args.images else None)
    images = interpolate_run(pipe, z0, z1, args.frames, seeds=seeds, sampler="ddim", steps=args.steps,
                             eta=0.0, clip_x0=False if args.images else None, **kwargs)
    save_grid(images, args.out, nrow=args.frames)
    print(f"wrote {args.out}")
    if args.gif is not None:
        save_gif([images[i] for i in [*range(args.frames), *range(args.frames - 2, 0, -1)]], args.gif,
                 duration_s=0.15, hold_last=0.15, scale=4)
        print(f"wrote {args.gif}")


def _read_upscale_input(path: Path, pipe: Any, shrink: bool) -> Any:
    """An image to upscale: at the run's low resolution, or with ``shrink`` at its full one."""
    from PIL import Image

    from difflab.edit import read_image

    lowres = pipe.lowres_condition
    (c, h, w), (_, big_h, big_w) = lowres.small_shape, pipe.image_shape
    if path.is_file():
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError:
            size = None
        if not shrink and size == (big_w, big_h):
            raise ValueError(f"image {path} is {big_w}x{big_h}, the size this run draws; it upscales {w}x{h} "
                             f"images by {lowres.factor}: add --shrink to upscale its shrunk copy")
        if size is not None and size != ((big_w, big_h) if shrink else (w, h)):
            want = f"{big_w}x{big_h} (with --shrink)" if shrink else f"{w}x{h}"
            raise ValueError(f"image {path} is {size[0]}x{size[1]}; this run upscales {w}x{h} images by "
                             f"{lowres.factor}: give a {want} image")
    return read_image(path, pipe.image_shape if shrink else (c, h, w))


def cmd_upscale(args: argparse.Namespace) -> None:
    import torch

    from difflab.cli.sample import sample_kwargs
    from difflab.edit import bicubic, consistency, upscale_run
    from difflab.viz import save_grid

    kwargs = sample_kwargs(args)
    pipe = _load(args)
    if not pipe.is_lowres:
        raise ValueError(f"{args.run} does not upscale images (it was trained with --cond "
                         f"{pipe.config.cond}); train one with --cond lowres --factor 2|4")
    lowres, factor = pipe.lowres_condition, pipe.config.lowres_factor
    images = torch.cat([_read_upscale_input(path, pipe, args.shrink) for path in args.image])
    small = lowres.shrink(images) if args.shrink else images
    c, h, w = lowres.small_shape
    print(f"upscale: {len(small)} image(s) {w}x{h} -> {w * factor}x{h * factor}, {args.n} sample(s) each")
    kwargs.pop("seed")
    out = upscale_run(pipe, small, n=args.n, seed=args.seed, **kwargs)
    _write(out, args.out, nrow=args.n)
    agree = consistency(out, small.repeat_interleave(args.n, 0), factor)
    print(f"consistency (the output shrunk again vs the input): {agree.mean():.1f} dB PSNR "
          f"(bicubic: {consistency(bicubic(small, factor), small, factor).mean():.1f} dB)")
    if args.compare is not None:
        blocky = torch.nn.functional.interpolate(small, scale_factor=factor, mode="nearest")
        columns = [blocky, bicubic(small, factor),
                   *out.view(len(small), args.n, c, h * factor, w * factor).unbind(1)]
        if args.shrink:
            columns.append(images)
        save_grid(torch.stack(columns, 1).flatten(0, 1), args.compare, nrow=len(columns))
        print(f"wrote {args.compare}: per row the input (pixels enlarged), bicubic, {args.n} upscaling(s)"
              + (", the original" if args.shrink else ""))


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.cli.args import Parser
    from difflab.cli.sample import add_sample_args
    from difflab.edit import INPAINT_METHODS, INVERSIONS

    group = sub.add_parser("edit", help="edit images with a trained run: inpaint, img2img, invert, "
                           "interpolate, upscale")
    cmds = group.add_subparsers(dest="edit_command", required=True, parser_class=Parser,
                                metavar="inpaint|img2img|invert|interpolate|upscale")

    p = cmds.add_parser("inpaint", help="regenerate the white part of a mask (RePaint or "
                        "replace-known-region)")
    _common(p, "the run's")
    p.add_argument("--image", type=Path, required=True, help="the image, at the run's size")
    p.add_argument("--mask", type=Path, required=True,
                   help="single-channel mask of the image's size: white (255) = regenerate, black = keep")
    p.add_argument("--out", type=Path, default=Path("inpainted.png"),
                   help=with_default("output", "inpainted.png"))
    p.add_argument("--method", choices=INPAINT_METHODS, default="repaint",
                   help="RePaint (Lugmayr et al. 2022: resampling) or replace-known-region "
                   "(default: repaint)")
    p.add_argument("--steps", type=positive_int, default=100, help=with_default("denoising steps", 100))
    p.add_argument("--jump-length", type=positive_int, default=10,
                   help=with_default("RePaint: levels to jump back up (j)", 10))
    p.add_argument("--jump-n-sample", type=positive_int, default=10,
                   help=with_default("RePaint: times each jump point is visited (r; 1 = replace)", 10))
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help=with_default("the denoising step", "ddpm"))
    p.add_argument("--eta", type=non_negative_float, help="ddim's eta (default: 0)")
    p.add_argument("--feather", type=int, default=0,
                   help=with_default("soft edge: blend over this many pixels inside the hole", 0))
    p.add_argument("--n", type=positive_int, default=1, help=with_default("variations (a grid when > 1)", 1))
    p.set_defaults(func=cmd_inpaint)

    p = cmds.add_parser("img2img", help="SDEdit: noise an image part way and denoise it (towards --class)")
    p.add_argument("run", type=Path, help=RUN_HELP)
    add_sample_args(p)
    p.add_argument("--image", type=Path, required=True, help="the image, at the run's size")
    p.add_argument("--strength", type=_strength, default=0.6,
                   help=with_default("0 = the input unchanged, 1 = ignore it; round(strength x steps) steps "
                                     "run", 0.6))
    p.add_argument("--out", type=Path, default=Path("img2img.png"),
                   help=with_default("output", "img2img.png"))
    p.set_defaults(func=cmd_img2img, n=1, prompt_file=None, negative_prompt=None)
    for action in p._actions:
        if action.dest == "n":
            action.default = 1
            action.help = with_default("variations (a grid when > 1)", 1)

    p = cmds.add_parser("invert", help="DDIM inversion: the noise that DDIM maps back to an image")
    _common(p, "1, the conditional model: inversion drifts at high guidance")
    p.add_argument("--image", type=Path, required=True, help="the image, at the run's size")
    p.add_argument("--out", type=Path, default=Path("noise.npy"),
                   help=with_default("the noise (.npy; the settings go to the .json beside it)", "noise.npy"))
    p.add_argument("--steps", type=positive_int, default=50, help=with_default("DDIM steps", 50))
    p.add_argument("--method", choices=INVERSIONS, default="fixed-point",
                   help="plain DDIM inversion or fixed-point iterations per step (default: fixed-point)")
    p.add_argument("--iterations", type=positive_int, default=3,
                   help=with_default("fixed-point iterations per step", 3))
    p.add_argument("--reconstruction", type=Path, help="also write the DDIM reconstruction here")
    p.set_defaults(func=cmd_invert)

    p = cmds.add_parser("interpolate", help="spherical interpolation between two seeds or two images")
    _common(p, "the run's (1 with --images)")
    p.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"),
                   help="two seeds (default: --seed, --seed+1)")
    p.add_argument("--noise", type=Path, nargs=2, metavar=("A.npy", "B.npy"), help="two saved noises")
    p.add_argument("--images", type=Path, nargs=2, metavar=("A.png", "B.png"),
                   help="two images, inverted first")
    p.add_argument("--frames", type=int, default=8, help=with_default("images in the strip", 8))
    p.add_argument("--steps", type=positive_int, default=50, help=with_default("DDIM steps", 50))
    p.add_argument("--method", choices=INVERSIONS, default="fixed-point", help="inversion of --images")
    p.add_argument("--iterations", type=positive_int, default=3,
                   help=with_default("fixed-point iterations", 3))
    p.add_argument("--out", type=Path, default=Path("interpolation.png"),
                   help=with_default("the strip", "interpolation.png"))
    p.add_argument("--gif", type=Path, help="also write a GIF going there and back")
    p.set_defaults(func=cmd_interpolate)

    p = cmds.add_parser("upscale", help="super-resolution with a run trained with --cond lowres (SR3)")
    p.add_argument("run", type=Path, help="run folder written by `difflab train --cond lowres`")
    add_sample_args(p)
    p.add_argument("--image", type=Path, nargs="+", required=True,
                   help="low-resolution image(s): the run's size divided by its factor")
    p.add_argument("--shrink", action="store_true",
                   help="the images are at the run's size: shrink them by the factor first (to compare "
                   "with the original)")
    p.add_argument("--out", type=Path, default=Path("upscaled.png"),
                   help=with_default("output (a grid, one row per image, when there are several)",
                                     "upscaled.png"))
    p.add_argument("--compare", type=Path,
                   help="also write a comparison: per image the input, bicubic, the upscalings (and the "
                   "original with --shrink)")
    p.set_defaults(func=cmd_upscale, prompt_file=None, negative_prompt=None)
    for action in p._actions:
        if action.dest == "n":
            action.default = 1
            action.help = with_default("upscalings per image (different seeds)", 1)
