"""Does bf16 training cost model accuracy? Fits the dynamics ensemble on a real dataset in float32 and
in bfloat16 mixed precision, same seeds and splits, and compares the held-out error.

    uv run python benchmarks/model_precision.py [--dataset ID] [--seeds 3] [--epochs 30]

Both fits see the same holdout rows (the split is drawn before training) and are evaluated the same way,
in float32: elite-mean MSE and elite Gaussian NLL per dimension of the normalized (delta obs, reward)
targets, plus the reward MSE in original units. Prints one JSON line per fit and a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from worldmodels.data.minari_load import DatasetError, load_offline_dataset
from worldmodels.dynamics import DynamicsEnsemble

DEFAULT_DATASET_ID = "o2o/HalfCheetah-v5/medium-replay-s20000-t100000-seed0-v1"  # configs/dataset/default.yaml


def evaluate(model: DynamicsEnsemble, data: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, float]:
    obs, act = data["obs"][rows], data["act"][rows]
    target = torch.cat([data["next_obs"][rows] - obs, data["rew"][rows].unsqueeze(-1)], dim=-1)  # [H, D]
    mean, var = model.predict(obs, act)  # [E, H, D] in original units
    elites = model.elite_indices
    mean, var = mean[elites], var[elites]  # [K, H, D]
    scale = model.target_std  # [D]; errors in normalized units, as the fit's own holdout metric
    z = (mean - target) / scale
    var_n = var / scale.square()
    nll = 0.5 * (z.square() / var_n + var_n.log() + torch.log(torch.tensor(2 * torch.pi)))
    return {
        "holdout_mse": float(((mean.mean(0) - target) / scale).square().mean()),
        "holdout_nll": float(nll.mean()),
        "reward_mse": float((mean.mean(0)[:, -1] - target[:, -1]).square().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET_ID, help="a Minari dataset ID in the local store")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="max epochs per fit (the quick preset's cap)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")
    try:
        ds = load_offline_dataset(args.dataset)
    except DatasetError as err:
        parser.error(str(err))  # names the local IDs and how to build one; exit status 2
    fields = {"obs": ds.observations, "act": ds.actions, "rew": ds.rewards, "next_obs": ds.next_observations,
              "terminal": ds.terminations}
    data = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in fields.items()}
    results: dict[str, list[dict]] = {"float32": [], "bfloat16": []}
    for seed in range(args.seeds):
        for precision in results:
            torch.manual_seed(seed)
            model = DynamicsEnsemble(data["obs"].shape[1], data["act"].shape[1], train_precision=precision)
            report = model.fit(data, max_epochs=args.epochs, generator=torch.Generator().manual_seed(seed))
            row = {"precision": precision, "seed": seed, "epochs": report.epochs, "seconds": round(report.seconds, 1),
                   "steps_per_second": round(report.train_steps / report.seconds, 1),
                   **evaluate(model, data, report.holdout_indices)}
            results[precision].append(row)
            print(json.dumps(row), flush=True)
    summary = {"dataset": args.dataset, "transitions": int(data["obs"].shape[0])}
    for precision, rows in results.items():
        for key in ("holdout_mse", "holdout_nll", "reward_mse", "steps_per_second"):
            values = [r[key] for r in rows]
            summary[f"{precision}/{key}"] = round(statistics.mean(values), 5)
            if len(values) > 1:
                summary[f"{precision}/{key}_sd"] = round(statistics.stdev(values), 5)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
