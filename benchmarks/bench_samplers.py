"""Samplers vs network evaluations: exact error on a Gaussian-mixture toy, per-step overhead
against diffusers' schedulers, and (with ``--run``) digit quality of a trained model.

1. Accuracy. Data is a 1-D Gaussian mixture, whose denoiser E[x_0 | x_sigma] is closed-form, so
   every sampler runs with the exact model (linear schedule, T = 1000). For the deterministic
   samplers the error is the RMS distance to ONE reference for every sampler and NFE: the exact
   probability-flow solution from the same x_T at the grids' common start sigma_max (t = T - 1) to
   the schedule's smallest sigma sigma_min (t = 0), a DOP853 solve in log sigma (rtol 1e-10),
   followed by the exact final denoising step D(.; sigma_min) (see :func:`ode_reference` for why
   this endpoint and not the ODE's own at sigma = 0). For all samplers also the Wasserstein-1
   distance of the samples to the data distribution (its floor is the Monte-Carlo noise of ``--n``
   samples, printed as the spread over 100 draws of exact samples), with DDPM's full T-step
   ancestral chain as a reference row.
2. Overhead. Milliseconds per network evaluation of difflab's ``sample`` and of a diffusers
   scheduler loop on the same network (a tiny UNet, and a free "network" to isolate the sampler).
   Both sides time the same span, from nothing but the network and the starting noise to the
   final sample: difflab builds its NoiseSchedule and calls ``sample`` (grid, loop); diffusers
   builds its scheduler, calls ``set_timesteps`` and runs the loop. The two sides alternate
   (difflab, diffusers, diffusers, difflab, ...) over ``--repeats`` repetitions after a warm-up
   (5x as many for the free network); the table gives the medians and the median of the
   per-repetition ratios.
3. Trained model (``--run RUN``): FD-digit against real MNIST and the classifier's confident share
   vs NFE, with DDPM's full T-step chain as a reference row (``--no-ddpm-reference``: without).
   Goal (``--goal-nfe N``, default 10 when N is among ``--nfe``): some sampler at N NFE reaches
   DDIM at 100 NFE's FD-digit (<=); exit status 1 when none does (``--goal-nfe 0``: no check).

    python benchmarks/bench_samplers.py --quick       # ~1 minute
    OMP_NUM_THREADS=1 python benchmarks/bench_samplers.py --skip accuracy    # the overhead table
    python benchmarks/bench_samplers.py --run runs/mnist --sigmas karras
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import NoiseSchedule, sample
from difflab.diffusion import discrete_sigmas, t_to_sigma
from difflab.samplers import SAMPLERS, TIMESTEP_SAMPLERS, sigma_grid
from difflab.schedules import timesteps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_report

STOCHASTIC = {"ddpm": {}, "euler-ancestral": {}, "dpmpp-2m-sde": {}, "dpmpp-3m-sde": {}}
DETERMINISTIC = {"ddim": {}, "euler": {}, "heun": {}, "dpmpp-2m": {}, "unipc": {}}
EXTRA = {"heun (churn 10)": ("heun", {"s_churn": 10.0})}

# ---- the Gaussian-mixture toy -----------------------------------------------------------------
W = np.array([0.3, 0.5, 0.2])
M = np.array([-0.8, 0.1, 0.7])
S = np.array([0.1, 0.15, 0.05])


def mixture_x0(x: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    """E[x_0 | x_sigma = x] for x_0 ~ sum_k w_k N(m_k, s_k^2), x_sigma = x_0 + sigma eps."""
    x = x[..., None]
    var = S**2 + np.asarray(sigma)[..., None] ** 2
    logp = np.log(W) - 0.5 * np.log(var) - 0.5 * (x - M) ** 2 / var
    gamma = np.exp(logp - logp.max(-1, keepdims=True))
    gamma /= gamma.sum(-1, keepdims=True)
    return (gamma * (M + S**2 / var * (x - M))).sum(-1)


def mixture_model(schedule: NoiseSchedule) -> Callable[..., torch.Tensor]:
    """The exact eps model at any (fractional) timestep: t -> sigma by difflab's interpolation."""
    log_sigmas = discrete_sigmas(schedule).log()

    def model(x_t: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        sigma = t_to_sigma(log_sigmas, t.cpu()).numpy().reshape(-1, *([1] * (x_t.ndim - 1)))
        x_sigma = x_t.cpu().double().numpy() * np.sqrt(1 + sigma**2)
        eps = (x_sigma - mixture_x0(x_sigma, sigma)) / sigma
        return torch.from_numpy(eps).to(x_t)

    return model


def ode_solve(x_T: np.ndarray, sigma_start: float, sigma_end: float) -> np.ndarray:
    """The exact probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from x_sigma_start =
    x_T sqrt(1 + sigma_start^2) (the samplers' VP-to-VE convention) down to sigma_end >= 0: DOP853
    (rtol = atol = 1e-10) in u = log sigma, dx/du = x - D, down to sigma_end, or for sigma_end = 0
    down to 0.01 and from there in sigma itself, where the right-hand side -sigma * score(x; sigma)
    is smooth and tends to 0 (D(x; 0) = x: every mixture component has positive variance)."""
    from scipy.integrate import solve_ivp

    def f_log(u: float, y: np.ndarray) -> np.ndarray:
        return y - mixture_x0(y, math.exp(u))

    def f_lin(sigma: float, y: np.ndarray) -> np.ndarray:
        return (y - mixture_x0(y, sigma)) / sigma if sigma > 0 else np.zeros_like(y)

    tol = {"method": "DOP853", "rtol": 1e-10, "atol": 1e-10}
    y = x_T * math.sqrt(1 + sigma_start**2)
    floor = sigma_end if sigma_end > 0 else min(1e-2, sigma_start)
    y = solve_ivp(f_log, (math.log(sigma_start), math.log(floor)), y, **tol).y[:, -1]
    if sigma_end == 0:
        y = solve_ivp(f_lin, (floor, 0.0), y, **tol).y[:, -1]
    return y


def ode_reference(x_T: np.ndarray, sigma_start: float, sigma_end: float) -> np.ndarray:
    """The exact solution from sigma_start to sigma_end, then the exact D(.; sigma_end).

    With sigma_end = sigma_min, the schedule's smallest sigma (t = 0), this is the one point that
    every sampler converges to as its steps shrink, so it is the common reference for every
    sampler and NFE. The sigma samplers' grids end with a step from their last positive sigma to
    0, which all of them (euler, heun, dpmpp, unipc) take as x_0 = D(x; sigma_last); DDIM's last
    step lands on its x_0 prediction D(x; sigma_t) at its last timestep t just the same. On the
    karras and log-snr grids sigma_last = sigma_min for every NFE; on the trailing timestep grid
    it is sigma at t = T/N - 1 (0.72 at 5 steps, 0.076 at 50), which reaches sigma_min (t = 0) at
    N = T. The ODE's own endpoint x(0) is not that limit: no grid refines the jump from sigma_min
    to 0, so every sampler would keep the same O(sigma_min^2 * score) distance to it
    (:func:`accuracy` prints its size). The previous reference, D at each grid's own last sigma,
    moved with NFE on the timestep grid, so its columns measured different problems."""
    return mixture_x0(ode_solve(x_T, sigma_start, sigma_end), sigma_end)


def mixture_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return (W * norm.cdf((x[:, None] - M) / S)).sum(-1)


def w1_to_data(samples: np.ndarray) -> float:
    """Wasserstein-1 = int |F_n - F| dx between the empirical and the exact mixture CDF."""
    xs = np.sort(samples)
    grid = np.linspace(min(xs[0], -2.0), max(xs[-1], 2.0), 20001)
    emp = np.searchsorted(xs, grid, side="right") / len(xs)
    return float(np.abs(emp - mixture_cdf(grid)).sum() * (grid[1] - grid[0]))


def steps_for(sampler: str, nfe: int) -> int:
    return max(1, (nfe + 1) // 2) if sampler == "heun" else nfe


def accuracy(args: argparse.Namespace) -> None:
    sched = NoiseSchedule.linear(1000)
    model = mixture_model(sched)
    x_T = torch.randn((args.n, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = discrete_sigmas(sched)
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    x_T_np = x_T.numpy().ravel()
    reference = ode_reference(x_T_np, sigma_max, sigma_min)  # the same for every row and column
    runs = {**{k: (k, v) for k, v in {**DETERMINISTIC, **STOCHASTIC}.items()}, **EXTRA}
    ode_err: dict[str, list[str]] = {}
    w1: dict[str, list[str]] = {}
    for name, (sampler, options) in runs.items():
        ode_err[name], w1[name] = [], []
        for nfe in args.nfe:
            steps = steps_for(sampler, nfe)
            grid_kind = "timesteps" if sampler in TIMESTEP_SAMPLERS else args.sigmas
            if sampler in TIMESTEP_SAMPLERS:
                start = float(sigmas[int(timesteps(sched.T, steps, "trailing")[0])])
            else:
                start = float(sigma_grid(sched, steps, grid_kind, "trailing")[0])
            # the reference starts there too (the log-snr grid's ends are float32-rounded: ~1e-7)
            if not math.isclose(start, sigma_max, rel_tol=1e-6):
                raise RuntimeError(f"{name} at {steps} steps starts at sigma {start}, not {sigma_max}")
            out = sample(
                model, x_T, schedule=sched, sampler=sampler, steps=steps,
                sigmas=None if sampler in TIMESTEP_SAMPLERS else grid_kind,
                generator=torch.Generator().manual_seed(1), return_nfe=True, **options,
            )
            x = out.x.numpy().ravel()
            w1[name].append(f"{w1_to_data(x):.4f}" + ("" if out.nfe == nfe else f" ({out.nfe})"))
            if sampler in DETERMINISTIC and not options:
                ode_err[name].append(f"{np.sqrt(np.mean((x - reference) ** 2)):.2e}")
            else:
                ode_err[name].append("-")
    chain = sample(model, x_T, schedule=sched, sampler="ddpm", steps=sched.T,
                   generator=torch.Generator().manual_seed(1), return_nfe=True)
    chain_w1 = f"{w1_to_data(chain.x.numpy().ravel()):.4f}"
    w1[f"ddpm, {chain.nfe} NFE (reference, every column)"] = [chain_w1] * len(args.nfe)
    to_x0 = float(np.sqrt(np.mean((reference - ode_solve(x_T_np, sigma_max, 0.0)) ** 2)))
    note = f"grid: {args.sigmas} for the sigma samplers, trailing timesteps for ddpm/ddim; {args.n} samples"
    table(f"RMS error vs one exact reference for every sampler and NFE: the probability-flow ODE "
          f"solved exactly from the same x_T at sigma_max = {sigma_max:.1f} (t = {sched.T - 1}) to the "
          f"schedule's smallest sigma_min = {sigma_min:.4f} (t = 0), then the exact final denoising "
          f"step D(x; sigma_min), the limit of every sampler as its steps shrink ({note}; the reference "
          f"is RMS {to_x0:.1e} from the ODE's own endpoint at sigma = 0)", args.nfe, ode_err)
    floor = [w1_to_data(mixture_sample(args.n, seed)) for seed in range(100)]
    lo, mid, hi = np.percentile(floor, [5, 50, 95])
    table(f"W1 to the data distribution ({note}; {args.n} exact samples, 100 draws: median {mid:.4f}, "
          f"5-95% {lo:.4f}-{hi:.4f}, the Monte-Carlo floor)", args.nfe, w1)


def mixture_sample(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(len(W), size=n, p=W)
    return M[k] + S[k] * rng.standard_normal(n)


def table(title: str, nfes: list[int], rows: dict[str, list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


# ---- overhead vs diffusers ----------------------------------------------------------------------
def diffusers_schedulers() -> dict[str, Callable[[], object]]:
    import diffusers as d

    return {
        "ddim": lambda: d.DDIMScheduler(timestep_spacing="trailing"),
        "euler": lambda: d.EulerDiscreteScheduler(timestep_spacing="trailing"),
        "euler-ancestral": lambda: d.EulerAncestralDiscreteScheduler(timestep_spacing="trailing"),
        "heun": lambda: d.HeunDiscreteScheduler(timestep_spacing="trailing"),
        "dpmpp-2m": lambda: d.DPMSolverMultistepScheduler(timestep_spacing="trailing"),
        "dpmpp-2m-sde": lambda: d.DPMSolverMultistepScheduler(
            algorithm_type="sde-dpmsolver++", timestep_spacing="trailing"
        ),
        "dpmpp-3m-sde": lambda: d.DPMSolverMultistepScheduler(
            algorithm_type="sde-dpmsolver++", solver_order=3, timestep_spacing="trailing"
        ),
        "unipc": lambda: d.UniPCMultistepScheduler(timestep_spacing="trailing"),
    }


Net = Callable[..., torch.Tensor]


def time_diffusers(make: Callable[[], Any], net: Net, x: torch.Tensor, steps: int, takes_generator: bool
                   ) -> tuple[float, int]:
    """Seconds from building the scheduler to the final sample (the same span as
    :func:`time_difflab`), and the number of network evaluations."""
    gen = torch.Generator().manual_seed(0)
    kw = {"generator": gen} if takes_generator else {}
    t0 = time.perf_counter()
    ref = make()
    ref.set_timesteps(steps)
    x = x * ref.init_noise_sigma
    for t in ref.timesteps:
        out = net(ref.scale_model_input(x, t), t.expand(x.shape[0]))
        x = ref.step(out, t, x, **kw).prev_sample
    return time.perf_counter() - t0, len(ref.timesteps)


def time_difflab(sampler: str, net: Net, x: torch.Tensor, steps: int) -> tuple[float, int]:
    """Seconds from building the noise schedule to the final sample, and the network evaluations."""
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    sched = NoiseSchedule.linear(1000)
    out = sample(net, x, schedule=sched, sampler=sampler, steps=steps, generator=gen, return_nfe=True)
    return time.perf_counter() - t0, out.nfe


def overhead(args: argparse.Namespace) -> None:
    from difflab.nets import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, groups=8)).eval()
    nets: dict[str, Callable[..., torch.Tensor]] = {
        "none (0.1 x)": lambda x, t, **_: 0.1 * x,
        "tiny UNet": lambda x, t, **_: unet(x, t.float()),
    }
    x = torch.randn((args.batch, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    print(f"\n### ms per network evaluation, batch {args.batch}x1x28x28, {args.time_steps} steps; both "
          f"sides from building the schedule to the final sample, alternating, median of {args.repeats} "
          f"repetitions ({5 * args.repeats} for the free network) after a warm-up\n")
    print("| network | sampler | NFE | difflab ms | diffusers ms | ratio |")
    print("|---|---|---|---|---|---|")
    refs = diffusers_schedulers()
    takes_gen = {name: "generator" in inspect.signature(make().step).parameters
                 for name, make in refs.items()}
    with torch.no_grad():
        for net_name, net in nets.items():
            repeats = args.repeats * (5 if net_name.startswith("none") else 1)
            for sampler, make in refs.items():
                sides = {
                    "difflab": lambda s=sampler, n=net: time_difflab(s, n, x, args.time_steps),
                    "diffusers": lambda m=make, n=net, s=sampler: time_diffusers(
                        m, n, x, args.time_steps, takes_gen[s]),
                }
                for run in sides.values():  # warm-up
                    run()
                per_nfe: dict[str, list[float]] = {"difflab": [], "diffusers": []}
                nfes: dict[str, int] = {}
                for rep in range(repeats):
                    for side in ("difflab", "diffusers") if rep % 2 == 0 else ("diffusers", "difflab"):
                        seconds, nfes[side] = sides[side]()
                        per_nfe[side].append(1e3 * seconds / nfes[side])
                a, b = statistics.median(per_nfe["difflab"]), statistics.median(per_nfe["diffusers"])
                ratio = statistics.median(
                    o / t for o, t in zip(per_nfe["difflab"], per_nfe["diffusers"], strict=True))
                nfe = f"{nfes['difflab']} / {nfes['diffusers']}"
                print(f"| {net_name} | {sampler} | {nfe} | {a:.3f} | {b:.3f} | {ratio:.2f} |", flush=True)


# ---- a trained model -----------------------------------------------------------------------------
def trained(args: argparse.Namespace) -> list[str]:
    """The digit-score tables of ``--run``; returns the missed goal, if any."""
    from difflab.data import load_dataset, parse_data_spec
    from difflab.eval.digit_classifier import digit_scores, fd_digit
    from difflab.pipeline import load

    pipe = load(args.run, "auto")
    data = load_dataset(parse_data_spec("mnist"))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))  # rows are sorted by label
    real, _ = data.batch(order[: min(args.n_images, len(data))])
    fd: dict[str, list[str]] = {}
    conf: dict[str, list[str]] = {}
    for sampler in args.samplers or [s for s in SAMPLERS if s != "ddpm"]:
        fd[sampler], conf[sampler] = [], []
        for nfe in args.nfe:
            images = pipe.sample(args.n_images, sampler=sampler, steps=steps_for(sampler, nfe), seed=0,
                                 sigmas=None if sampler in TIMESTEP_SAMPLERS else args.sigmas)
            fd[sampler].append(f"{fd_digit(images, real):.2f}")
            conf[sampler].append(f"{float(digit_scores(images)['confident_share']):.3f}")
    if args.ddpm_reference:  # the full ancestral chain, one value repeated in every column
        T = pipe.schedule.T
        images = pipe.sample(args.n_images, sampler="ddpm", steps=T, seed=0)
        fd[f"ddpm, {T} NFE (reference)"] = [f"{fd_digit(images, real):.2f}"] * len(args.nfe)
        share = float(digit_scores(images)["confident_share"])
        conf[f"ddpm, {T} NFE (reference)"] = [f"{share:.3f}"] * len(args.nfe)
    note = f"{args.run}, {args.n_images} images, grid {args.sigmas}"
    table(f"FD-digit vs real MNIST ({note})", args.nfe, fd)
    table(f"confident share ({note})", args.nfe, conf)
    if not args.goal_nfe or args.goal_nfe not in args.nfe:
        return []
    ref = fd_digit(pipe.sample(args.n_images, sampler="ddim", steps=100, seed=0), real)
    col = args.nfe.index(args.goal_nfe)
    best, best_fd = min(((name, float(cells[col])) for name, cells in fd.items() if name in SAMPLERS),
                        key=lambda kv: kv[1])  # not the DDPM reference row
    ok = best_fd <= ref
    print(f"\nGoal: a sampler at {args.goal_nfe} NFE reaches DDIM-100's FD-digit {ref:.2f}: best {best} "
          f"{best_fd:.2f}: {'met' if ok else 'NOT met'}")
    return [] if ok else [f"best at {args.goal_nfe} NFE: {best} FD-digit {best_fd:.2f} > DDIM-100 {ref:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    parser.add_argument("--sigmas", default="karras", choices=("timesteps", "karras", "log-snr"))
    parser.add_argument("--n", type=int, default=4000, help="toy samples")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="overhead: repetitions per side")
    parser.add_argument("--run", help="a trained run folder for the digit scores")
    parser.add_argument("--goal-nfe", type=int, default=10,
                        help="--run: a sampler at this NFE must reach DDIM-100's FD-digit (0: no check)")
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--samplers", nargs="*", choices=tuple(SAMPLERS),
                        help="for --run (default: all but ddpm)")
    parser.add_argument("--no-ddpm-reference", dest="ddpm_reference", action="store_false",
                        help="--run: no reference row of DDPM's full T-step chain (T NFE per image)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("accuracy", "overhead"))
    args = parser.parse_args()
    if args.quick:
        args.n, args.nfe, args.batch, args.time_steps, args.repeats, args.n_images = 300, [5, 10], 2, 4, 1, 64
    machine_report(torch.device("cpu"))
    if "accuracy" not in args.skip:
        accuracy(args)
    if "overhead" not in args.skip:
        overhead(args)
    missed = trained(args) if args.run else []
    print(f"\n{load_report('at the end')}")
    exit_on_missed(missed, "GOAL MISSED: few-step sampling quality", enforce=not args.quick)


if __name__ == "__main__":
    main()
